"""A standing fault suite, part one: faults caused by the CLIENT and by the FILE while a body is
being sent, for every server fastbody ships (issue 13).

Servers (each started once for the module, on first use, and stopped by PID at its end):
gunicorn with ``egg:fastbody#sync`` and ``#gthread`` (``--timeout 2``), uvicorn with fastbody's
``H11Protocol`` and ``HttpToolsProtocol`` on asyncio and on uvloop (``FASTBODY_SEND_TIMEOUT=2``),
and the ``fastbody serve DIR`` command (``--send-timeout 2``). The app servers serve
``tests/apps/wsgi_app.py`` / ``tests/apps/asgi_app.py``: a file (``wsgi.file_wrapper``, Starlette's
``FileResponse`` by ``pathsend``), a socket and a pipe (``cat``) body; ``fastbody serve`` serves
files only.

Faults, each parametrized over the servers it applies to:

1. the client goes away mid-body (closes its socket with bytes unread: the kernel resets the
   connection) from a file, a socket and a pipe body, the last two with their length told and
   chunked;
2. a client stops reading but keeps its connection open: it is cut off the send timeout after
   it stalled, while other clients are served meanwhile (the sync worker serves one connection
   at a time, so there the next client is served right after the cut);
3. a slow client that keeps moving is served past the gunicorn worker timeout and the send
   timeout: the whole body arrives and the worker is not killed;
4. the file shrinks during the send (the connection closes before the Content-Length, never a
   short body passed off as complete) or grows (exactly the declared length arrives, and the
   connection then serves a second request or closes cleanly).

Under ``-m slow`` as well (the default run stays near 90 s on two cores): chunked bodies under
uvloop for fault 1, socket and pipe bodies for faults 2 and 3, httptools' protocols for fault 3.

Every body is checked by sha256 (a body cut short: as a prefix of the right bytes). Each test
takes the worker's holdings (fds, pipes, RSS; ``tests/resources.py``) after a warm-up request of
the same kind, checks that they are back after the fault and a fresh whole request, and records a
row in the fault table printed at the end of the run (``conftest.fault_table``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("h11")
pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")

import h11
from conftest import FaultTable
from resources import Held, assert_released, held, settled
from servers import MIB, Server, fetch, start_serve, start_uvicorn, stop, wait_until
from test_gunicorn import start as start_gunicorn

APPS = Path(__file__).resolve().parent / "apps"
KIB = 1 << 10

TIMEOUT = 2
"""Seconds: gunicorn's ``--timeout`` (its worker timeout, and the sync and gthread workers' send
timeout), ``FASTBODY_SEND_TIMEOUT`` for uvicorn, ``--send-timeout`` for ``fastbody serve``."""

BLOB_SIZE = 16 * MIB
"""Every body: more than three times what the socket buffers between a server and a client
hold (4 MiB of send buffer at most, ``net.ipv4.tcp_wmem`` here, and the client's small receive
buffer), so a fault always lands mid-body."""

SERVERS = [
    "gunicorn-sync",
    "gunicorn-gthread",
    "uvicorn-h11-asyncio",
    "uvicorn-httptools-asyncio",
    "uvicorn-h11-uvloop",
    "uvicorn-httptools-uvloop",
    "fastbody-serve",
]
APP_SERVERS = [name for name in SERVERS if name != "fastbody-serve"]
BODIES = ["file", "socket", "pipe", "socket-chunked", "pipe-chunked"]


def sha(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def mib(count: int) -> str:
    return f"{count / MIB:.1f} MiB"


# ---- the servers under test ----------------------------------------------------------------------


@dataclass
class Target:
    """One running server: how to ask it for a body, where it logs, which process does the work."""

    name: str
    server: Server
    pid: int
    site: Path

    @property
    def gunicorn(self) -> bool:
        return self.name.startswith("gunicorn")

    @property
    def one_at_a_time(self) -> bool:
        """gunicorn's sync worker serves one connection at a time (gunicorn's docs; fastbody's
        sync worker keeps that, README: it "ignores --threads")."""
        return self.name == "gunicorn-sync"

    def target(self, body: str, path: Path, tag: str) -> str:
        """The request target for ``body`` made from the file at ``path``: ``file``, or
        ``socket``/``pipe`` with their length told (Content-Length), or ``socket-chunked``/
        ``pipe-chunked`` without (chunked framing). ``tag``, an unknown query parameter every
        app ignores, finds the response's access line."""
        if self.name == "fastbody-serve":
            assert body == "file", "fastbody serve serves files only"
            return f"/{path.relative_to(self.site)}?fault={tag}"
        route, _, chunked = body.partition("-")
        length = "" if route == "file" or chunked else "&length=1"
        return f"/{route}?path={path}{length}&fault={tag}"

    def url(self, body: str, path: Path, tag: str) -> str:
        return self.server.url + self.target(body, path, tag)

    def errors(self) -> str:
        return self.server.errors()

    def ended(self, tag: str) -> int | None:
        """The body bytes the server's access line says response ``tag`` sent, once it ended
        (whole or not), or None while there is no such line."""
        if self.gunicorn:  # gunicorn's access line, "%(r)s %(s)s %(B)s", written at the end
            pattern = rf"GET \S*fault={tag}\S* HTTP/1\.1 200 (\d+)$"
            text = self.server.access_log.read_text(errors="replace")
        else:  # fastbody's own access line on uvicorn.error, written when the body ended
            pattern = rf'fastbody: \S+ - "GET \S*fault={tag}\S* HTTP/1\.1" 200 (\d+) bytes'
            text = self.errors()
        found = re.search(pattern, text, re.MULTILINE)
        return int(found.group(1)) if found else None

    def mark(self) -> int:
        """Where the error log ends now: lines after it are about what happens next."""
        return len(self.errors())

    def broken(self, since: int) -> re.Match[str] | None:
        """The one line the server logged after ``since`` for a body not sent whole (it names
        the request by its path only: one fault at a time is made on a server)."""
        pattern = r"fastbody: (.*?) after (\d+)(?: of (\d+))? bytes of GET /"
        return re.search(pattern, self.errors()[since:])

    def wait_broken(self, since: int, timeout: float) -> re.Match[str]:
        return wait_until(lambda: self.broken(since), timeout, f"{self.name} logs a broken body")

    def alive(self) -> None:
        """The server still answers from the same worker (not killed, not replaced)."""
        if self.name == "fastbody-serve":
            assert self.server.process.poll() is None, self.errors()
            with socket.create_connection(("127.0.0.1", self.server.port), timeout=10):
                pass
        else:
            assert int(self.server.info()["pid"]) == self.pid, self.errors()
        assert "WORKER TIMEOUT" not in self.errors(), self.errors()


def start_target(name: str, site: Path, logs: Path) -> Target:
    if name.startswith("gunicorn-"):
        worker = name.removeprefix("gunicorn-")
        server = start_gunicorn(logs, worker, "--timeout", str(TIMEOUT), "--graceful-timeout", "3")
    elif name.startswith("uvicorn-"):
        _, http, loop = name.split("-")
        env = {"FASTBODY_SEND_TIMEOUT": str(TIMEOUT)}
        server = start_uvicorn("asgi_app:app", APPS, logs, http, loop, env=env)
    else:
        server = start_serve(site, logs, "--send-timeout", str(TIMEOUT))
        # One uvicorn process serves and is the worker: no child does the work.
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text()
        if children.strip():
            stop(server)
            raise AssertionError(f"fastbody serve has worker processes {children}: which one is measured?")
        return Target(name, server, server.process.pid, site)
    return Target(name, server, int(server.info()["pid"]), site)


class Fleet:
    """The servers of this module, each started the first time a test asks for it."""

    def __init__(self, site: Path, logs: Path) -> None:
        self.site, self.logs = site, logs
        self.running: dict[str, Target] = {}

    def get(self, name: str) -> Target:
        if name not in self.running:
            self.running[name] = start_target(name, self.site, self.logs)
        return self.running[name]

    def stop_all(self) -> None:
        for target in self.running.values():
            stop(target.server)


@dataclass(frozen=True)
class Blob:
    path: Path
    data: bytes
    digest: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory ``fastbody serve`` serves; every body file of this module is in it."""
    return tmp_path_factory.mktemp("faults-site")


@pytest.fixture(scope="module")
def blob(site: Path) -> Blob:
    data = os.urandom(BLOB_SIZE)
    path = site / "blob.bin"
    path.write_bytes(data)
    return Blob(path, data, sha(data))


@pytest.fixture(scope="module")
def small_blob(site: Path) -> Blob:
    """What the other clients ask for while one is at fault: small, so it cannot be slow."""
    data = os.urandom(2 * MIB)
    path = site / "small.bin"
    path.write_bytes(data)
    return Blob(path, data, sha(data))


@pytest.fixture(scope="module")
def fleet(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    servers = Fleet(site, tmp_path_factory.mktemp("faults-logs"))
    yield servers
    servers.stop_all()


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


def warmed_baseline(target: Target, url: str, digest: str) -> Held:
    """The worker's holdings after one whole request of the kind under test (lazy imports, the
    pipe pool, buffers made), once they have stopped moving (its connection closed)."""
    got = fetch(url)
    assert (got.status, got.sha256) == (200, digest), target.errors()
    previous = held(target.pid)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = held(target.pid)
        if now.fds == previous.fds and now.pipes == previous.pipes:
            return now
        previous = now
    return previous


def fresh_request_is_whole(target: Target, blob: Blob, body: str = "file") -> None:
    got = fetch(target.url(body, blob.path, new_tag()))
    assert (got.status, got.size, got.sha256) == (200, BLOB_SIZE, blob.digest), target.errors()


def released(target: Target, before: Held) -> Held:
    """The worker's holdings once back to ``before`` (or what they are after 10 s)."""
    return settled(target.pid, before)


# ---- a raw HTTP/1.1 client -----------------------------------------------------------------------


def connect(port: int, rcvbuf: int | None = None, timeout: float = 10) -> socket.socket:
    """A connection to 127.0.0.1:``port``; ``rcvbuf`` set before connecting, so the window the
    client offers is small from the start (the server's sends then follow the client's reads)."""
    client = socket.socket()
    if rcvbuf is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.settimeout(timeout)
    client.connect(("127.0.0.1", port))
    return client


def ask(client: socket.socket, target: str) -> None:
    client.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


def read_head(client: socket.socket) -> tuple[bytes, bytearray]:
    """The response head (up to its blank line) and the body bytes read with it."""
    received = bytearray()
    while b"\r\n\r\n" not in received:
        data = client.recv(64 * KIB)
        assert data, f"closed before the head's end: {bytes(received)!r}"
        received += data
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return head, bytearray(body)


def send_request(client: socket.socket, target: str) -> h11.Connection:
    """Send a GET for ``target``; the h11 connection that parses its answer."""
    parser = h11.Connection(h11.CLIENT)
    client.sendall(parser.send(h11.Request(method="GET", target=target, headers=[("Host", "127.0.0.1")])))
    parser.send(h11.EndOfMessage())
    return parser


def content_length(head: bytes) -> int:
    found = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    assert found, head
    return int(found.group(1))


def read_to_end(client: socket.socket, body: bytearray, limit: int) -> str:
    """Read until the server closes (or resets) the connection, at most ``limit`` body bytes;
    how it ended."""
    try:
        while len(body) < limit:
            data = client.recv(MIB)
            if not data:
                return "closed"
            body += data
    except ConnectionResetError:
        return "reset"
    return "limit reached"


def is_prefix(body: bytes | bytearray, data: bytes) -> bool:
    return len(body) <= len(data) and sha(body) == sha(data[: len(body)])


# ---- 1. the client goes away mid-body ------------------------------------------------------------

GONE_CASES = [
    pytest.param(
        name,
        body,
        id=f"{name}-{body}",
        marks=[pytest.mark.slow] if body.endswith("chunked") and "uvloop" in name else [],
    )
    for name in SERVERS
    for body in BODIES
    if name in APP_SERVERS or body == "file"
]
"""Chunked socket and pipe bodies under uvloop are left to ``-m slow``: the chunk lines are the
protocol's (h11's, or the engine's ChunkedWriter under httptools), the same on either loop."""


@pytest.mark.parametrize(("name", "body"), GONE_CASES)
def test_client_gone_mid_body(
    fleet: Fleet, blob: Blob, fault_table: FaultTable, name: str, body: str
) -> None:
    """A client reads 1 MiB of a 16 MiB body and closes its socket (bytes unread: a reset). The
    server logs the client's going (not an upstream's), stops, answers a fresh request whole,
    and holds no more fds, pipes or memory than before."""
    target = fleet.get(name)
    before = warmed_baseline(target, target.url(body, blob.path, new_tag()), blob.digest)
    tag, mark = new_tag(), target.mark()
    with connect(target.server.port, rcvbuf=64 * KIB) as client:
        parser = send_request(client, target.target(body, blob.path, tag))
        received = bytearray()
        while len(received) < MIB:  # the body's bytes, its chunk lines taken off by h11
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = client.recv(256 * KIB)
                assert data, f"closed after {len(received)} bytes, before the client left"
                parser.receive_data(data)
            elif isinstance(event, h11.Response):
                assert event.status_code == 200, event
            elif isinstance(event, h11.Data):
                received += event.data
            else:
                raise AssertionError(f"{event!r} after {len(received)} bytes")
    assert is_prefix(received, blob.data)
    line = target.wait_broken(mark, 10)
    what, sent, expected = line.group(1), int(line.group(2)), line.group(3)
    assert what == "client went away", line.group(0)
    assert len(received) <= sent < BLOB_SIZE, line.group(0)
    assert expected == (None if body.endswith("chunked") else str(BLOB_SIZE)), line.group(0)
    wait_until(lambda: target.ended(tag) is not None, 10, "the response's access line")
    assert target.ended(tag) == sent  # logged as what it was, never as a whole response
    fresh_request_is_whole(target, blob, body)
    target.alive()
    after = released(target, before)
    fault_table.record(
        f"client gone mid-body ({body})",
        name,
        f"left after {mib(len(received))}; server stopped at {mib(sent)}, next request whole",
        before,
        after,
    )
    assert_released(before, after)


# ---- 2. a stalled reader is cut off on time, others are served meanwhile --------------------------


STALL_CASES = [pytest.param(name, "file", id=f"{name}-file") for name in SERVERS] + [
    pytest.param(name, body, id=f"{name}-{body}", marks=pytest.mark.slow)
    for name in APP_SERVERS
    for body in ("socket", "pipe")
]
"""Socket and pipe bodies (the splice path's wait, and its pipe given up after the cut) are left
to ``-m slow``: each case waits out the timeout, and twelve more would double the run."""


@pytest.mark.parametrize(("name", "body"), STALL_CASES)
def test_stalled_reader_is_cut_off_while_others_are_served(
    fleet: Fleet, blob: Blob, small_blob: Blob, fault_table: FaultTable, name: str, body: str
) -> None:
    """A client asks for a 16 MiB body (the file, or the socket or pipe carrying it), reads the
    head and then nothing, its connection kept open. The server cuts it off TIMEOUT s (+ the
    kernel's slack, below) after it stalled and logs "no progress for 2.0 s". Meanwhile another
    client asks for a 2 MiB body of the same kind:

    - gthread, uvicorn, fastbody serve: it gets it whole while the stalled one is still held;
    - gunicorn sync (one connection at a time): it waits in the listen queue and gets it whole
      right after the cut, within TIMEOUT + 3 s of asking.

    The cut is timed by polling the server's log (a client that reads nothing cannot see the
    server's close: its FIN queues behind the unsent body). The kernel takes bytes for up to
    about a second after the client stalls (the server's send buffer growing): that is progress,
    so the cut comes between TIMEOUT and TIMEOUT + 1.5 s after the stall (the lower bound
    has 0.5 s off: the client's own clock starts when it has read the head)."""
    target = fleet.get(name)
    before = warmed_baseline(target, target.url(body, blob.path, new_tag()), blob.digest)
    tag, other_tag, mark = new_tag(), new_tag(), target.mark()
    other: dict[str, float | str | int] = {}

    def other_client() -> None:
        asked = time.monotonic()
        got = fetch(target.url(body, small_blob.path, other_tag))
        other.update(asked=asked, done=time.monotonic(), status=got.status, sha256=got.sha256)

    client = connect(target.server.port, rcvbuf=4 * KIB)
    try:
        ask(client, target.target(body, blob.path, tag))
        head, received = read_head(client)
        stalled = time.monotonic()
        assert head.startswith(b"HTTP/1.1 200"), head
        meanwhile = threading.Thread(target=other_client, daemon=True)
        meanwhile.start()
        if not target.one_at_a_time:
            meanwhile.join(TIMEOUT + 10)
            assert not meanwhile.is_alive(), "the other client was not served"
            assert target.broken(mark) is None, "the other client was served only after the cut"
        line = target.wait_broken(mark, TIMEOUT + 3)
        cut = time.monotonic() - stalled
        assert line.group(1) == f"no progress for {float(TIMEOUT)} s, cut off", line.group(0)
        assert TIMEOUT - 0.5 <= cut <= TIMEOUT + 1.5, cut
        meanwhile.join(TIMEOUT + 10)
        assert not meanwhile.is_alive(), "the other client was not served"
        ended = read_to_end(client, received, BLOB_SIZE)
    finally:
        client.close()
    assert (other["status"], other["sha256"]) == (200, small_blob.digest), target.errors()
    if target.one_at_a_time:
        waited = float(other["done"]) - float(other["asked"])
        assert float(other["done"]) >= stalled + cut - 0.1, "served before the stalled one was cut"
        assert waited <= TIMEOUT + 3, waited
        how = f"next client served right after the cut ({waited:.1f} s after asking)"
    else:
        how = f"other client served meanwhile in {float(other['done']) - float(other['asked']):.2f} s"
    assert ended in ("closed", "reset") and len(received) < BLOB_SIZE, (ended, len(received))
    assert is_prefix(received, blob.data)
    fresh_request_is_whole(target, blob, body)
    target.alive()
    after = released(target, before)
    fault_table.record(
        f"stalled reader ({body})",
        name,
        f"cut {cut:.1f} s after the stall at {mib(int(line.group(2)))} ({ended}); {how}",
        before,
        after,
    )
    assert_released(before, after)


# ---- 3. a slow client that keeps moving is served whole, past every timeout -----------------------

SLOW_SIZE = 20 * MIB
SLOW_RATE = 5 * MIB
SLOW_STEP = 256 * KIB
"""The slow client reads at most 256 KiB at a time, at 5 MiB/s in all (one read every 50 ms):
4 s for 20 MiB. Slower (64 KiB every 50 ms) the socket buffers, 4 MiB of them, would hold most
of a 4 s body, and the server would be done long before its timeout; at this rate it is still
sending 3 s after the request (the test checks it)."""

SLOW_CASES = [
    pytest.param(name, "file", id=f"{name}-file", marks=[pytest.mark.slow] if "httptools" in name else [])
    for name in SERVERS
] + [
    pytest.param(name, body, id=f"{name}-{body}", marks=pytest.mark.slow)
    for name in APP_SERVERS
    for body in ("socket", "pipe")
]
"""For the slow client, httptools' protocols are left to ``-m slow``: the waiting and the
timeouts are the loop's and the engine's, the same as under h11 (which runs by default on both
loops); the protocol only frames. So are socket and pipe bodies (4 s each)."""


@pytest.fixture(scope="module")
def slow_blob(site: Path) -> Blob:
    data = os.urandom(SLOW_SIZE)
    path = site / "slow.bin"
    path.write_bytes(data)
    return Blob(path, data, sha(data))


@pytest.mark.parametrize(("name", "body"), SLOW_CASES)
def test_slow_moving_client_gets_the_whole_body(
    fleet: Fleet, slow_blob: Blob, fault_table: FaultTable, name: str, body: str
) -> None:
    """A client that reads 5 MiB/s (256 KiB every 50 ms) takes about 4 s for 20 MiB, twice gunicorn's
    ``--timeout 2`` (its worker timeout: the sync worker must keep notifying the arbiter) and the
    send timeout (which is for no progress, not for the whole body). It gets every byte by hash;
    the server logs the response as whole (after TIMEOUT s: it really was still sending), and the
    worker is the same one."""
    target = fleet.get(name)
    before = warmed_baseline(target, target.url(body, slow_blob.path, new_tag()), slow_blob.digest)
    tag, mark = new_tag(), target.mark()
    digest, received = hashlib.sha256(), 0
    server_done: float | None = None
    with connect(target.server.port, rcvbuf=128 * KIB, timeout=TIMEOUT + 5) as client:
        started = time.monotonic()
        ask(client, target.target(body, slow_blob.path, tag))
        head, first = read_head(client)
        assert head.startswith(b"HTTP/1.1 200") and content_length(head) == SLOW_SIZE, head
        digest.update(first)
        received = len(first)
        while received < SLOW_SIZE:
            data = client.recv(min(SLOW_STEP, SLOW_SIZE - received))
            assert data, f"closed after {received} bytes: {target.errors()[-2000:]}"
            digest.update(data)
            received += len(data)
            if server_done is None and target.ended(tag) is not None:
                server_done = time.monotonic() - started
            ahead = received / SLOW_RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        took = time.monotonic() - started
    wait_until(lambda: target.ended(tag) is not None, 10, "the whole response logged")
    if server_done is None:
        server_done = took
    assert digest.hexdigest() == slow_blob.digest
    assert target.ended(tag) == SLOW_SIZE
    assert target.broken(mark) is None
    assert server_done > TIMEOUT + 0.5, f"the server was done after {server_done:.1f} s: not past its timeout"
    target.alive()
    after = released(target, before)
    fault_table.record(
        f"slow moving client, 5 MiB/s ({body})",
        name,
        f"whole in {took:.1f} s, server sending until {server_done:.1f} s (timeout {TIMEOUT} s); same worker",
        before,
        after,
    )
    assert_released(before, after)


# ---- 4. the file shrinks or grows during the send --------------------------------------------------


@pytest.fixture
def changing_file(site: Path, blob: Blob) -> Iterator[Path]:
    """A copy of the blob for one test to change under the server."""
    path = site / f"changing-{new_tag()}.bin"
    shutil.copyfile(blob.path, path)
    yield path
    path.unlink()


SHRUNK = 8 * MIB + 12345
"""Past what the server has sent when the file is cut, and not on a page boundary."""


@pytest.mark.parametrize("name", SERVERS)
@pytest.mark.parametrize("size", [SHRUNK, 0], ids=["to-8MiB", "to-0"])
def test_file_truncated_during_the_send_closes_the_connection(
    fleet: Fleet, blob: Blob, changing_file: Path, fault_table: FaultTable, name: str, size: int
) -> None:
    """The file is truncated from 16 MiB, to 8 MiB + 12345 or to nothing, after the client has
    read 1 MiB of it (the server has sent at most ~5 MiB: the socket buffers). The server's
    sendfile finds the new end: it must close the connection there, before the Content-Length,
    and log the short body (at exactly the new size, or at what it had sent when the file was
    emptied). h11, the client's parser, must not see the message end; what came is the file's
    first bytes, as they were."""
    target = fleet.get(name)
    before = warmed_baseline(target, target.url("file", blob.path, new_tag()), blob.digest)
    tag, mark = new_tag(), target.mark()
    with connect(target.server.port, rcvbuf=64 * KIB) as client:
        parser = send_request(client, target.target("file", changing_file, tag))
        body = bytearray()
        truncated = False
        with pytest.raises(h11.RemoteProtocolError, match="without sending complete message body"):
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    if not truncated and len(body) >= MIB:
                        os.truncate(changing_file, size)
                        truncated = True
                    try:
                        parser.receive_data(client.recv(256 * KIB))
                    except ConnectionResetError:
                        parser.receive_data(b"")
                elif isinstance(event, h11.Response):
                    assert event.status_code == 200
                    assert dict(event.headers)[b"content-length"] == str(BLOB_SIZE).encode()
                elif isinstance(event, h11.Data):
                    body += event.data
                else:  # EndOfMessage: a short body passed off as complete
                    raise AssertionError(f"{event!r} after {len(body)} of {BLOB_SIZE} bytes")
    assert truncated, "the body ended before the file was truncated"
    assert is_prefix(body, blob.data), len(body)
    line = target.wait_broken(mark, 10)
    sent = int(line.group(2))
    assert (line.group(1), int(line.group(3))) == ("body ended", BLOB_SIZE), line.group(0)
    if size:
        assert sent == size, line.group(0)
    else:
        assert MIB <= sent < 8 * MIB, line.group(0)  # what was in flight
    assert len(body) <= sent, (len(body), line.group(0))
    fresh_request_is_whole(target, blob)
    target.alive()
    after = released(target, before)
    fault_table.record(
        f"file truncated mid-send ({BLOB_SIZE} -> {size} bytes)",
        name,
        f"server stopped at {mib(sent)}, client got {mib(len(body))} and h11 saw the body incomplete;"
        " next request whole",
        before,
        after,
    )
    assert_released(before, after)


GROWTH = 4 * MIB


@pytest.mark.parametrize("name", SERVERS)
def test_file_grown_during_the_send_sends_the_declared_length(
    fleet: Fleet, blob: Blob, changing_file: Path, fault_table: FaultTable, name: str
) -> None:
    """4 MiB are appended to the file after the client has read 1 MiB of it. Exactly the
    Content-Length (the old size) arrives, the old bytes; not one byte more before the client
    asks again. Then the connection either answers a second request on it (the grown file,
    whole, parsed by h11) or is closed cleanly (gunicorn's sync worker closes every connection)."""
    target = fleet.get(name)
    before = warmed_baseline(target, target.url("file", blob.path, new_tag()), blob.digest)
    tag, mark = new_tag(), target.mark()
    extra = os.urandom(GROWTH)
    with connect(target.server.port, rcvbuf=64 * KIB) as client:
        ask(client, target.target("file", changing_file, tag))
        head, body = read_head(client)
        assert head.startswith(b"HTTP/1.1 200") and content_length(head) == BLOB_SIZE, head
        while len(body) < MIB:
            body += client.recv(256 * KIB)
        with open(changing_file, "ab") as grow:
            grow.write(extra)
        while len(body) < BLOB_SIZE:
            data = client.recv(min(MIB, BLOB_SIZE - len(body)))
            assert data, f"closed after {len(body)} bytes"
            body += data
        assert sha(body) == blob.digest
        # Nothing more until asked: bytes past the Content-Length would be taken for the next answer.
        client.settimeout(0.3)
        try:
            after_body = client.recv(MIB)
        except TimeoutError:
            after_body = None
        except ConnectionResetError:
            after_body = b""
        assert not after_body, f"{len(after_body or b'')} bytes past the Content-Length"
        if after_body is None:  # kept open: it must serve the next request right
            client.settimeout(10)
            got = exchange_on(client, target.target("file", changing_file, new_tag()))
            assert (got.status, got.size, got.sha256) == (200, BLOB_SIZE + GROWTH, sha(blob.data + extra))
            connection = "kept alive: the grown file whole on it next"
        else:
            assert target.one_at_a_time or not target.gunicorn, "gthread closed a keep-alive connection"
            connection = "closed cleanly after it"
    assert target.broken(mark) is None, target.broken(mark)
    wait_until(lambda: target.ended(tag) is not None, 10, "the response logged whole")
    assert target.ended(tag) == BLOB_SIZE
    target.alive()
    after = released(target, before)
    fault_table.record(
        "file grown mid-send (+4 MiB)",
        name,
        f"exactly {mib(BLOB_SIZE)} sent; connection {connection}",
        before,
        after,
    )
    assert_released(before, after)


@dataclass
class Answer:
    status: int
    size: int
    sha256: str


def exchange_on(client: socket.socket, target: str) -> Answer:
    """One GET on an open connection, parsed by h11 to its end."""
    parser = send_request(client, target)
    digest, size, status = hashlib.sha256(), 0, 0
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            parser.receive_data(client.recv(MIB))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            digest.update(event.data)
            size += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return Answer(status, size, digest.hexdigest())
        else:
            raise AssertionError(f"unexpected {event!r} after {size} bytes")
