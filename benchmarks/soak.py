"""A bounded soak of every fastbody server: mixed traffic with aborts for 10 minutes, every body
checked by sha256, every serving process's fds, pipes and RSS watched.

    .venv/bin/python benchmarks/soak.py [--minutes 10 | --seconds S] [--clients 16] [--seed 1]

Servers, each a real process on 127.0.0.1 started here (logs in a temporary directory, printed
when something failed):

- gunicorn ``-k egg:fastbody#sync`` and ``-k egg:fastbody#gthread --threads 8`` (``-w 1``), and
  uvicorn ``--http fastbody.integrations.uvicorn:H11Protocol`` and ``:HttpToolsProtocol``, all
  serving benchmarks/apps/soak_app.py: files (``wsgi.file_wrapper`` / ``FileResponse``), ranges
  (the WSGI app's own 206 / ``ZeroCopyResponse(path)``), HEAD, socket bodies (an upstream
  socket, spliced) and pipe bodies (``cat``'s stdout; chunked under uvicorn);
- ``ReverseProxy`` (benchmarks/apps/proxy_bench_fastbody.py under uvicorn's HttpToolsProtocol)
  in front of benchmarks/apps/proxy_bench_upstream.py: proxied files and HEAD. The same upstream
  feeds the socket bodies; it is a helper, not in the table;
- ``fastbody serve`` of the same files: files, ranges, HEAD.

They all run at the same time, for the whole run, rather than one after another: a leak grows
with the time a server is under load, so each gets the full 10 minutes instead of a sixth of
them; and one server's aborts then land while the others are busy, as on a real host. The cost
is that the two cores are shared by all of them and by the clients, which only makes it slower.

Traffic: ``--clients`` threads (16), each a loop of sessions, each on a server picked at random
(a seeded ``random.Random`` per thread): one request with ``Connection: close``; a keep-alive
run of 2-5 requests on one connection (a new one where the server closes, as gunicorn's sync
worker does); an abort, the head and part of a body of 1 or 16 MiB read, then the connection
closed (half of them with a reset); or a stall, a tiny receive buffer and nothing read for 1-3
s, then the head read and the connection closed. Requests ask for a whole file (1 KiB, 64 KiB,
1 MiB or 16 MiB), a random range of one, its HEAD, or the same bytes as a socket or pipe body.
Every complete body is checked against the file's sha256 (and its status, Content-Length,
Content-Range). A kept-alive connection closed or reset before the first byte of the answer to
a request reused on it is retried once on a new one, as HTTP clients do (a server may close an
idle connection; gunicorn's gthread worker, stock or fastbody's, resets a few while its threads
are held by stalled clients); the notes count those. The first ``max(2 s, 5 %)`` (at most 30
s) are a warm-up; then traffic pauses, each serving process is sampled (the "start"), traffic
resumes, is sampled every 10 s (the "max"), stops at the deadline, and once in-flight work has
settled (at most 20 s) the "end" is sampled.

Reading the result: one Markdown table, a row per server: requests done, complete and correct,
wrong (a body, status or length that is not the file's), aborted (our own aborts and stalls),
errors (a 5xx, a connection closed or reset before the end of a complete request, a timeout);
fds, pipes (fds whose link is ``pipe:``) and RSS at start / max / end. Then ``soak: PASS``, or
``soak: FAIL (<reasons>)`` for any wrong body, any server error, a serving process that died or
was replaced, fds more than 16 or pipes more than 8 above start at the end, RSS at the end more
than 32 MiB above start, a traceback or an ERROR line in a server's log (a body whose source
failed; a client that leaves is only INFO), or a server that completed no request.
Exit status 0 or 1. Notes under the table give the first few failures per server, and stderr the
log of each server that failed. Speed is not judged: the figures are noisy.

Bounded: the clients stop at the deadline; every socket wait is bounded (30 s); every process
started here is stopped by its pid (then its workers, by pid), on Ctrl-C and failure too.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import random
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, cast

from fastbody.integrations.cli.bench import Progress

if __package__:  # imported as benchmarks.soak
    from . import harness
else:  # run as a script: benchmarks/ is sys.path[0] (so never `import uvicorn` in this process)
    import harness

KIB, MIB = harness.KIB, harness.MIB
APPS = harness.APPS
SIZES = (KIB, 64 * KIB, MIB, 16 * MIB)
SIZE_WEIGHTS = (4, 3, 2, 1)
BIG = (MIB, 16 * MIB)  # what aborts and stalls ask for
KIND_WEIGHTS = {"file": 4, "range": 2, "head": 1, "socket": 2, "pipe": 2}
CLIENT_TIMEOUT = 30.0  # seconds any one socket operation of a client may wait
SAMPLE_EVERY = 10.0  # seconds between two samples of the serving processes
SETTLE = 20.0  # seconds the end sample waits for in-flight work to be released
FD_SLACK, PIPE_SLACK, RSS_SLACK_MIB = 16, 8, 32.0
NOTES = 5  # failures noted per server
TROUBLE = re.compile(r"^Traceback|\[ERROR\]|^ERROR:")  # a log line that fails the soak


# The servers


@dataclass(frozen=True)
class Routes:
    """A server's request targets (``{name}``: a file's name); None: not served there."""

    file: str
    range: str | None = None
    head: str | None = None
    socket: str | None = None
    pipe: str | None = None

    def kinds(self) -> list[str]:
        return [kind for kind in ("file", "range", "head", "socket", "pipe") if getattr(self, kind)]


WSGI_ROUTES = Routes(
    "/file?name={name}", "/file?name={name}", "/file?name={name}", "/socket?name={name}", "/pipe?name={name}"
)
ASGI_ROUTES = Routes(
    "/file?name={name}", "/zc?name={name}", "/zc?name={name}", "/socket?name={name}", "/pipe?name={name}"
)
PROXY_ROUTES = Routes("/{name}", head="/{name}")
SERVE_ROUTES = Routes("/{name}", "/{name}", "/{name}")


class Server(harness.Program):
    """One server process started here (``harness.Program``: started, waited for on ``/tiny``,
    stopped by pid with every descendant it had); ``master``: it serves through its children."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        routes: Routes,
        logs: Path,
        env: dict[str, str],
        master: bool = False,
    ) -> None:
        super().__init__(name, "", command, port, logs, env)
        self.routes, self.master = routes, master
        self.started_with: list[int] = []  # the serving processes when the soak started

    def serving(self) -> list[int]:
        """The pids that serve now: gunicorn's workers, else the process itself."""
        if self.process is None or self.process.poll() is not None:
            return []
        if not self.master:
            return [self.process.pid]
        with suppress(FileNotFoundError, ProcessLookupError):
            self.remember()  # so that stop() kills, by pid, a worker that outlives the master
            return sorted(harness.children(self.process.pid))
        return []

    def troubles(self) -> list[str]:
        """Its log's tracebacks and ERROR lines (gunicorn's ``[ERROR]``, uvicorn's ``ERROR:``):
        a client that leaves is an INFO line, a body whose source failed an ERROR."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if TROUBLE.search(line)]


def python(*arguments: str) -> list[str]:
    return [sys.executable, *arguments]


def gunicorn(name: str, worker: list[str], logs: Path, env: dict[str, str]) -> Server:
    port = harness.free_port()
    command = python("-m", "gunicorn", "--no-control-socket", "-w", "1", *worker, "-b", f"127.0.0.1:{port}")
    command += ["--timeout", "30", "--graceful-timeout", "5", "--log-level", "warning"]
    command += ["--pythonpath", str(APPS), "soak_app:application"]
    return Server(name, command, port, WSGI_ROUTES, logs, env, master=True)


def uvicorn(name: str, app: str, protocol: str, logs: Path, env: dict[str, str]) -> Server:
    port = harness.free_port()
    command = python("-m", "uvicorn", app, "--app-dir", str(APPS), "--host", "127.0.0.1", "--port", str(port))
    command += ["--workers", "1", "--log-level", "warning", "--no-access-log"]
    command += ["--http", f"fastbody.integrations.uvicorn:{protocol}"]
    routes = PROXY_ROUTES if app.startswith("proxy") else ASGI_ROUTES
    return Server(name, command, port, routes, logs, env)


def fastbody_serve(files: Path, logs: Path) -> Server:
    port = harness.free_port()
    command = python("-m", "fastbody", "serve", str(files), "--host", "127.0.0.1", "--port", str(port))
    command += ["--log-level", "warning", "--no-access-log"]
    return Server("fastbody serve", command, port, SERVE_ROUTES, logs, {})


def servers_under_test(files: Path, upstream: int, logs: Path) -> list[Server]:
    env = {"SOAK_FILES": str(files), "SOAK_UPSTREAM": str(upstream)}
    proxy_env = {"UPSTREAM": f"http://127.0.0.1:{upstream}"}
    return [
        gunicorn("gunicorn sync", ["-k", "egg:fastbody#sync"], logs, env),
        gunicorn("gunicorn gthread", ["-k", "egg:fastbody#gthread", "--threads", "8"], logs, env),
        uvicorn("uvicorn H11Protocol", "soak_app:app", "H11Protocol", logs, env),
        uvicorn("uvicorn HttpToolsProtocol", "soak_app:app", "HttpToolsProtocol", logs, env),
        uvicorn("ReverseProxy (uvicorn)", "proxy_bench_fastbody:app", "HttpToolsProtocol", logs, proxy_env),
        fastbody_serve(files, logs),
    ]


def upstream_server(files: Path, logs: Path) -> Server:
    """benchmarks/apps/proxy_bench_upstream.py over the files: the proxy's upstream, and the
    source of the socket bodies."""
    port = harness.free_port()
    command = python(str(APPS / "proxy_bench_upstream.py"), "--root", str(files), "--port", str(port))
    return Server("upstream", command, port, PROXY_ROUTES, logs, {})


@functools.cache
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digests(files: dict[str, bytes]) -> dict[str, str]:
    """Each body's sha256, computed once for all the client threads."""
    return {name: _digest(data) for name, data in files.items()}


def make_files(directory: Path) -> dict[str, bytes]:
    """The bodies, by name: random bytes of each size, and ``tiny`` (the readiness check)."""
    directory.mkdir()
    (directory / "tiny").write_bytes(b"ok\n")
    names = {os.path.basename(harness.make_file(str(directory), size)) for size in SIZES}
    return {name: (directory / name).read_bytes() for name in sorted(names)}


# The tallies and samples


@dataclass
class Tally:
    """What one server's requests came to; shared by the client threads."""

    correct: int = 0
    wrong: int = 0
    aborted: int = 0
    errors: int = 0
    retried: int = 0  # a kept-alive connection closed before a reused request's first byte
    notes: list[str] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)  # the first few retried, and what came before
    traffic: Counter[str] = field(default_factory=Counter)  # what was asked, by kind
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, note: str = "") -> None:
        with self.lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
            if outcome in ("wrong", "errors") and len(self.notes) < NOTES:
                self.notes.append(note)

    def retry(self, note: str) -> None:
        with self.lock:
            self.retried += 1
            if len(self.retries) < NOTES:
                self.retries.append(note)

    def saw(self, kind: str) -> None:
        with self.lock:
            self.traffic[kind] += 1

    @property
    def done(self) -> int:
        return self.correct + self.wrong + self.aborted + self.errors


@dataclass
class Watch:
    """One server's holdings: summed over its serving processes at start, the most seen, at end."""

    start: harness.Held | None = None
    peak: harness.Held | None = None
    end: harness.Held | None = None
    lost: list[str] = field(default_factory=list)  # serving processes that died or were replaced


def holdings(server: Server) -> harness.Held:
    """What ``server``'s serving processes hold together now."""
    fds = pipes = 0
    rss = 0.0
    for pid in server.serving():
        with suppress(ProcessLookupError):
            now = harness.held(pid)
            fds, pipes, rss = fds + now.fds, pipes + now.pipes, rss + now.rss_mib
    return harness.Held(fds, pipes, rss)


def most(one: harness.Held | None, other: harness.Held) -> harness.Held:
    if one is None:
        return other
    return harness.Held(max(one.fds, other.fds), max(one.pipes, other.pipes), max(one.rss_mib, other.rss_mib))


def check_alive(server: Server, watch: Watch) -> None:
    """Note it when the serving processes are not the ones the soak started with."""
    now = server.serving()
    if now != server.started_with and not watch.lost:
        code = server.process.poll() if server.process is not None else None
        exited = f", the server exited ({code})" if code is not None else ""
        watch.lost.append(f"serving pids {server.started_with} -> {now}{exited}")


def sample(servers: list[Server], watches: dict[str, Watch]) -> None:
    for server in servers:
        watch = watches[server.name]
        check_alive(server, watch)
        watch.peak = most(watch.peak, holdings(server))


def settled(servers: list[Server], watches: dict[str, Watch]) -> None:
    """The end sample: once every server is back within the slack of its start, or after SETTLE s."""
    deadline = time.monotonic() + SETTLE
    while True:
        ends = {server.name: holdings(server) for server in servers}
        back = all(not leaked(watches[name].start, end) for name, end in ends.items())
        if back or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for server in servers:
        watch = watches[server.name]
        check_alive(server, watch)
        watch.end = ends[server.name]
        watch.peak = most(watch.peak, watch.end)


def leaked(start: harness.Held | None, end: harness.Held) -> list[str]:
    if start is None:
        return []
    found = []
    if end.fds > start.fds + FD_SLACK:
        found.append(f"fds {start.fds} -> {end.fds} (more than +{FD_SLACK})")
    if end.pipes > start.pipes + PIPE_SLACK:
        found.append(f"pipes {start.pipes} -> {end.pipes} (more than +{PIPE_SLACK})")
    if end.rss_mib > start.rss_mib + RSS_SLACK_MIB:
        found.append(f"RSS {start.rss_mib:.0f} -> {end.rss_mib:.0f} MiB (more than +{RSS_SLACK_MIB:.0f})")
    return found


# The client


class Broken(Exception):
    """The server closed, reset or stalled a response before its end. ``fresh``: not one byte of
    it arrived (on a kept-alive connection, the server may have closed it as idle)."""

    def __init__(self, message: str, fresh: bool = False) -> None:
        super().__init__(message)
        self.fresh = fresh


@dataclass(frozen=True)
class Ask:
    """One request and what its answer must be."""

    method: str
    target: str
    status: int
    body: bytes  # the bytes expected (HEAD: those a GET would get)
    digest: str  # their sha256
    range: tuple[int, int] | None = None
    size: int = 0  # the whole file's size (for Content-Range)
    kind: str = "file"  # for the traffic line: file, range, head, socket, pipe, proxied

    def request(self, close: bool) -> bytes:
        fields = f"Range: bytes={self.range[0]}-{self.range[1]}\r\n" if self.range else ""
        fields += "Connection: close\r\n" if close else ""
        return f"{self.method} {self.target} HTTP/1.1\r\nHost: soak\r\n{fields}\r\n".encode()

    def __str__(self) -> str:
        asked = f" bytes={self.range[0]}-{self.range[1]}" if self.range else ""
        return f"{self.method} {self.target}{asked}"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    digest: str | None  # sha256 of the body; None for HEAD
    length: int


class Connection:
    """One client connection: requests written whole, answers read through a buffer."""

    def __init__(self, port: int, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connecting, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(CLIENT_TIMEOUT)
        try:
            self.sock.connect(("127.0.0.1", port))
        except OSError:
            self.sock.close()
            raise
        self.reader = io.BufferedReader(socket.SocketIO(self.sock, "rb"), 256 * KIB)
        self.last: Ask | None = None  # the request answered last on this connection
        self.answering = False  # the current answer's status line has arrived

    def close(self, reset: bool = False) -> None:
        if reset:
            with suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.reader.close()
        self.sock.close()

    def head(self) -> tuple[int, dict[str, str]]:
        """The status and fields of the next answer (fields lower-cased, repeats joined by ", ")."""
        line = self.reader.readline(65537)
        if not line:
            raise Broken("closed before the status line", fresh=self.last is not None)
        self.answering = True
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise Broken(f"not a status line: {line[:80]!r}")
        headers: dict[str, str] = {}
        while (line := self.reader.readline(65537)) not in (b"\r\n", b"\n"):
            if not line:
                raise Broken("closed in the head")
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        return int(parts[1]), headers

    def body(self, headers: dict[str, str]) -> tuple[str, int]:
        """Read a whole body as its fields frame it: (sha256, bytes)."""
        digest = hashlib.sha256()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            total = 0
            while size := self.chunk_size():
                total += self.exactly(size, digest)
                if self.reader.readline(3) != b"\r\n":
                    raise Broken("no CRLF after a chunk")
            while self.reader.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return digest.hexdigest(), total
        if "content-length" in headers:
            total = self.exactly(int(headers["content-length"]), digest)
            return digest.hexdigest(), total
        total = 0  # delimited by the close
        buffer = memoryview(bytearray(MIB))
        while got := self.reader.readinto(buffer):
            digest.update(buffer[:got])
            total += got
        return digest.hexdigest(), total

    def chunk_size(self) -> int:
        line = self.reader.readline(1024)
        if not line.endswith(b"\n"):
            raise Broken(f"cut in a chunk-size line: {line[:40]!r}")
        return int(line.split(b";")[0].strip(), 16)

    def exactly(self, count: int, digest: hashlib._Hash | None) -> int:
        """Read ``count`` bytes (hashed into ``digest`` if given); Broken if the server stops first."""
        buffer = memoryview(bytearray(min(count, MIB) or 1))
        left = count
        while left:
            got = self.reader.readinto(buffer[: min(left, len(buffer))])
            if not got:
                raise Broken(f"closed after {count - left} of {count} body bytes")
            if digest is not None:
                digest.update(buffer[:got])
            left -= got
        return count

    def exchange(self, ask: Ask, close: bool) -> tuple[Reply, bool]:
        """Send ``ask`` and read its whole answer: (the answer, whether the connection may be reused)."""
        self.answering = False
        try:
            self.sock.sendall(ask.request(close))
            status, headers = self.head()
            digest, length = None, 0
            if ask.method != "HEAD" and status not in (204, 304):
                digest, length = self.body(headers)
        except TimeoutError as error:
            raise Broken(f"no progress for {CLIENT_TIMEOUT:.0f} s") from error
        except (ConnectionError, BrokenPipeError) as error:
            fresh = self.last is not None and not self.answering
            raise Broken(f"{type(error).__name__}", fresh=fresh) from error
        self.last = ask
        reusable = not close and "close" not in headers.get("connection", "").lower()
        return Reply(status, headers, digest, length), reusable


def judge(ask: Ask, reply: Reply) -> tuple[str, str]:
    """``correct``, ``wrong`` or ``errors`` (a 5xx), with what was wrong."""
    if reply.status >= 500:
        return "errors", f"{ask}: status {reply.status}"
    if reply.status != ask.status:
        return "wrong", f"{ask}: status {reply.status}, expected {ask.status}"
    length = reply.headers.get("content-length")
    if length is not None and int(length) != len(ask.body):
        return "wrong", f"{ask}: Content-Length {length}, expected {len(ask.body)}"
    if ask.range and reply.headers.get("content-range") != f"bytes {ask.range[0]}-{ask.range[1]}/{ask.size}":
        return "wrong", f"{ask}: Content-Range {reply.headers.get('content-range')!r}"
    if ask.method == "HEAD":
        return "correct", ""
    if reply.length != len(ask.body) or reply.digest != ask.digest:
        return "wrong", f"{ask}: {reply.length} body bytes, sha256 {reply.digest}, not the file's"
    return "correct", ""


class Client:
    """One client thread's traffic: sessions on servers picked at random, until ``deadline``."""

    def __init__(
        self,
        servers: list[Server],
        tallies: dict[str, Tally],
        files: dict[str, bytes],
        rng: random.Random,
        stop: threading.Event,
    ) -> None:
        self.servers, self.tallies, self.files, self.rng, self.stop = servers, tallies, files, rng, stop
        self.digests = digests(files)

    def run(self, deadline: float) -> None:
        sessions: list[Callable[[Server], None]] = [self.one_request, self.kept_alive, self.abort, self.stall]
        while time.monotonic() < deadline and not self.stop.is_set():
            server = self.rng.choice(self.servers)
            self.rng.choices(sessions, weights=(4, 3, 1, 0.5))[0](server)

    def name(self, sizes: tuple[int, ...] = SIZES) -> str:
        size = self.rng.choices(sizes, weights=SIZE_WEIGHTS[-len(sizes) :])[0]
        return f"body-{size}.bin"

    def ask(self, server: Server) -> Ask:
        """A request of a random kind that ``server`` serves, for a random file."""
        kinds, name = server.routes.kinds(), self.name()
        kind = self.rng.choices(kinds, weights=[KIND_WEIGHTS[kind] for kind in kinds])[0]
        data, target = self.files[name], str(getattr(server.routes, kind)).format(name=name)
        if kind == "head":
            return Ask("HEAD", target, 200, data, self.digests[name], kind="head")
        if kind == "range":
            first = self.rng.randrange(len(data))
            span = self.rng.choice((1, 100, 64 * KIB, len(data)))
            last = self.rng.randrange(first, min(len(data), first + span))
            part = data[first : last + 1]
            digest = hashlib.sha256(part).hexdigest()
            return Ask("GET", target, 206, part, digest, (first, last), len(data), "range")
        kind = "proxied" if server.routes is PROXY_ROUTES else kind
        return Ask("GET", target, 200, data, self.digests[name], kind=kind)

    def one_request(self, server: Server) -> None:
        self.requests(server, [self.ask(server)])

    def kept_alive(self, server: Server) -> None:
        self.tallies[server.name].saw("kept-alive session")
        self.requests(server, [self.ask(server) for _ in range(self.rng.randint(2, 5))])

    def requests(self, server: Server, asks: list[Ask]) -> None:
        """``asks`` in turn on one connection (a new one where the server closed it); the last
        says ``Connection: close``. A reused connection closed before an answer's first byte is
        retried once on a new one."""
        tally = self.tallies[server.name]
        connection: Connection | None = None
        try:
            for index, ask in enumerate(asks):
                for attempt in (1, 2):
                    try:
                        connection = connection or Connection(server.port)
                        reply, reusable = connection.exchange(ask, close=index == len(asks) - 1)
                    except Broken as broken:
                        if connection is not None:
                            connection.close()
                        if broken.fresh and attempt == 1 and connection is not None:
                            tally.retry(f"{ask}, after {connection.last}: {broken}")
                            connection = None
                            continue
                        connection = None
                        tally.add("errors", f"{ask}: {broken}")
                        return
                    except OSError as error:
                        tally.add("errors", f"{ask}: {type(error).__name__}: {error}")
                        return
                    tally.add(*judge(ask, reply))
                    tally.saw(ask.kind)
                    if not reusable:
                        connection.close()
                        connection = None
                    break
        finally:
            if connection is not None:
                connection.close()

    def big_ask(self, server: Server) -> Ask:
        kinds = [kind for kind in ("file", "socket", "pipe") if getattr(server.routes, kind)]
        kind, name = self.rng.choice(kinds), self.name(BIG)
        target = str(getattr(server.routes, kind)).format(name=name)
        return Ask("GET", target, 200, self.files[name], self.digests[name])

    def abort(self, server: Server) -> None:
        """Read the head and part of a big body, then close (half the time with a reset)."""
        ask = self.big_ask(server)

        def read_part(connection: Connection) -> None:
            self.head_of(server, ask, connection)
            connection.exactly(self.rng.randrange(len(ask.body) // 2), None)
            connection.close(reset=self.rng.random() < 0.5)

        self.leave(server, ask, "abort", read_part)

    def stall(self, server: Server) -> None:
        """Ask for a big body on a tiny receive window, read nothing for 1-3 s, read the head, leave."""
        ask = self.big_ask(server)

        def wait_then_go(connection: Connection) -> None:
            self.stop.wait(self.rng.uniform(1, 3))
            self.head_of(server, ask, connection)

        self.leave(server, ask, "stall", wait_then_go, receive_buffer=4 * KIB)

    def leave(
        self,
        server: Server,
        ask: Ask,
        kind: str,
        how: Callable[[Connection], None],
        receive_buffer: int | None = None,
    ) -> None:
        """Send ``ask`` on a new connection, do ``how`` with it, close it: counted as aborted
        unless the server failed first."""
        tally = self.tallies[server.name]
        connection: Connection | None = None
        try:
            connection = Connection(server.port, receive_buffer)
            connection.sock.sendall(ask.request(close=True))
            how(connection)
        except _Answered:
            return
        except Broken as broken:
            note = str(broken)
        except TimeoutError:
            note = f"no progress for {CLIENT_TIMEOUT:.0f} s"
        except OSError as error:
            note = f"{type(error).__name__}: {error}"
        else:
            tally.add("aborted")
            tally.saw(kind)
            return
        finally:
            if connection is not None:
                connection.close()
        tally.add("errors", f"{ask} (to {kind}): {note}")

    def head_of(self, server: Server, ask: Ask, connection: Connection) -> None:
        status, headers = connection.head()
        if status != 200 or headers.get("content-length", str(len(ask.body))) != str(len(ask.body)):
            outcome = "errors" if status >= 500 else "wrong"
            length = headers.get("content-length")
            self.tallies[server.name].add(
                outcome, f"{ask} (to abort): status {status}, Content-Length {length}"
            )
            raise _Answered


class _Answered(Exception):
    """An abort's head was already judged a failure (and counted)."""


def drive(
    servers: list[Server],
    tallies: dict[str, Tally],
    files: dict[str, bytes],
    clients: int,
    seconds: float,
    seed: int,
    stop: threading.Event,
) -> None:
    """``clients`` threads of traffic for ``seconds``; returns when all have finished."""
    deadline = time.monotonic() + seconds
    threads = []
    for index in range(clients):
        client = Client(servers, tallies, files, random.Random(seed * 1000 + index), stop)
        threads.append(threading.Thread(target=client.run, args=(deadline,), daemon=True))
        threads[-1].start()
    for thread in threads:
        while thread.is_alive():  # short joins: Ctrl-C reaches this thread
            thread.join(0.5)


# The run


def sampler(
    servers: list[Server],
    watches: dict[str, Watch],
    progress: Progress,
    rounds: int,
    stop: threading.Event,
    tallies: dict[str, Tally],
) -> None:
    """Every SAMPLE_EVERY s until ``stop``: sample the servers, and say so on the progress display."""
    for index in range(rounds):
        if stop.wait(SAMPLE_EVERY):
            return
        sample(servers, watches)
        done = sum(tally.done for tally in tallies.values())
        bad = sum(tally.wrong + tally.errors for tally in tallies.values())
        progress.line(f"[{index + 1}/{rounds}] sample: {done} requests, {bad} wrong or failed")


def report(servers: list[Server], tallies: dict[str, Tally], watches: dict[str, Watch]) -> list[str]:
    """Print the table and the notes; return the reasons to fail."""
    harness.table(
        "server",
        "requests",
        "correct",
        "wrong",
        "aborted",
        "errors",
        "fds start/max/end",
        "pipes start/max/end",
        "RSS MiB start/max/end",
    )
    reasons: list[str] = []
    for server in servers:
        tally, watch = tallies[server.name], watches[server.name]
        start, peak, end = watch.start, watch.peak, watch.end
        assert start is not None and peak is not None and end is not None
        harness.row(
            server.name,
            str(tally.done),
            str(tally.correct),
            str(tally.wrong),
            str(tally.aborted),
            str(tally.errors),
            f"{start.fds}/{peak.fds}/{end.fds}",
            f"{start.pipes}/{peak.pipes}/{end.pipes}",
            f"{start.rss_mib:.0f}/{peak.rss_mib:.0f}/{end.rss_mib:.0f}",
        )
        reasons += [f"{server.name}: {reason}" for reason in failures(server, tally, watch)]
    notes = [(server, tallies[server.name]) for server in servers]
    for server, tally in notes:
        for note in tally.notes:
            print(f"- {server.name}: {note}")
        if tally.retried:
            what = f"{tally.retried} kept-alive connections closed before a reused request (retried)"
            print(f"- {server.name}: {what}: {'; '.join(tally.retries)}")
    traffic = sum((tally.traffic for tally in tallies.values()), Counter[str]())
    print(f"\nTraffic, all servers: {', '.join(f'{count} {kind}' for kind, count in traffic.most_common())}.")
    return reasons


def failures(server: Server, tally: Tally, watch: Watch) -> list[str]:
    found = []
    if tally.wrong:
        found.append(f"{tally.wrong} wrong")
    if tally.errors:
        found.append(f"{tally.errors} server errors")
    if not tally.correct:
        found.append("no request completed")
    found += watch.lost
    assert watch.end is not None
    found += leaked(watch.start, watch.end)
    if troubles := server.troubles():
        found.append(f"{len(troubles)} tracebacks or ERROR lines in its log, the first: {troubles[0][:200]}")
    return found


def soak(seconds: float, clients: int, seed: int, workdir: Path, stop: threading.Event) -> bool:
    """Start the servers, warm them up, soak them for the rest of ``seconds``, print the table and
    the verdict; True for PASS. Every process started is stopped before it returns or raises."""
    files = make_files(workdir / "files")
    upstream = upstream_server(workdir / "files", workdir)
    servers = servers_under_test(workdir / "files", upstream.port, workdir)
    try:
        harness.start_all([upstream, *servers], [], {server.name for server in [upstream, *servers]})
        warmup = min(30.0, max(2.0, seconds * 0.05))
        rounds = int((seconds - warmup) // SAMPLE_EVERY)
        title = f"soak, {len(servers)} servers, {clients} clients, {seconds:.0f} s"
        progress = Progress(title, progress_stream())
        progress.line(f"steps: {rounds + 1}")
        warmed = {server.name: Tally() for server in servers}
        drive(servers, warmed, files, clients, warmup, seed, stop)
        progress.line(f"[0/{rounds}] warm-up: {sum(tally.done for tally in warmed.values())} requests")
        tallies = {server.name: Tally() for server in servers}
        watches = starting(servers)
        watcher = threading.Thread(
            target=sampler, args=(servers, watches, progress, rounds, stop, tallies), daemon=True
        )
        watcher.start()
        drive(servers, tallies, files, clients, seconds - warmup, seed + 1, stop)
        stop.set()
        watcher.join(5)
        settled(servers, watches)
        progress.close("settled")
        print(f"\n### Soak: {seconds:.0f} s, {len(servers)} servers at once, {clients} client threads\n")
        reasons = report(servers, tallies, watches)
        show_logs(servers, reasons)
        print(f"\nsoak: FAIL ({'; '.join(reasons)})" if reasons else "\nsoak: PASS", flush=True)
        return not reasons
    finally:
        stop.set()
        for server in [*servers, upstream]:
            server.stop()


def starting(servers: list[Server]) -> dict[str, Watch]:
    """The start sample, with no traffic: once the warm-up's last closes have reached the servers."""
    time.sleep(1)
    watches = {server.name: Watch() for server in servers}
    for server in servers:
        server.started_with = server.serving()
        watches[server.name].start = watches[server.name].peak = holdings(server)
    return watches


def show_logs(servers: list[Server], reasons: list[str]) -> None:
    """On stderr, the log tail of each server that failed (the logs go with the temporary directory)."""
    for server in servers:
        if any(reason.startswith(f"{server.name}: ") for reason in reasons):
            print(f"\n{server.name}'s log, last lines:\n{server.log_tail()}", file=sys.stderr)


class PlainLines(io.TextIOBase):
    """A stream that writes to ``stream`` but is not a terminal, whatever ``stream`` is."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def progress_stream() -> TextIO:
    """stderr: a tqdm bar on a terminal (``Progress``), plain lines in a log; plain lines under CI
    (``$CI`` set) even on a terminal."""
    return cast(TextIO, PlainLines(sys.stderr)) if os.environ.get("CI") else sys.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0, help="how long the traffic runs (10)")
    length.add_argument("--seconds", type=float, help="the same, in seconds (at least 10)")
    parser.add_argument("--clients", type=int, default=16, help="client threads (16)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the traffic's choices (1)")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    if seconds < 10 or args.clients < 1:
        parser.error("the soak needs at least 10 seconds and one client")
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # the finally blocks run
    workdir = Path(tempfile.mkdtemp(prefix="fastbody-soak-", dir="/tmp"))
    stop = threading.Event()
    try:
        passed = soak(seconds, args.clients, args.seed, workdir, stop)
    except KeyboardInterrupt:
        print("soak: interrupted (every process it started is stopped)", file=sys.stderr)
        return 130
    finally:
        stop.set()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
