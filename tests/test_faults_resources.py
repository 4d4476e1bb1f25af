"""Faults of resources and hostile requests against real server processes (issue 13, the
standing fault suite): an unprivileged user's pipe budget spent, the fd limit reached, paths
that try to leave the served directory, and Range headers built to amplify or to break the
parser. Every body is checked by sha256, every server's holdings (fds, pipes, RSS, from
``/proc``) are read after a warm-up and again after the fault, and each fault records a row of
the fault table printed at the end of the run.

The servers are real processes on 127.0.0.1: gunicorn with fastbody's gthread worker, uvicorn
with fastbody's h11 protocol, the ASGI ``ReverseProxy``, ``fastbody serve``; the clients are
real sockets (raw bytes where httpx would normalise the request) and httpx.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("gunicorn")
pytest.importorskip("starlette")

from conftest import FaultTable  # noqa: E402
from resources import Held, assert_released, held  # noqa: E402
from servers import MIB, Server, fetch, free_port, launch, moved, stop, wait_until  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
KIB = 1 << 10


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def gone(pid: int) -> bool:
    """Whether no process ``pid`` is left (a zombie not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def stop_all(server: Server, *pids: int) -> None:
    """Stop ``server`` by its pid and wait until ``pids`` (its workers) are gone as well."""
    stop(server)
    for pid in pids:
        wait_until(lambda pid=pid: gone(pid), 15, f"process {pid} gone")  # type: ignore[misc]


def gunicorn_gthread(port: int, app: str, threads: int, *prefix: str) -> list[str]:
    command = [*prefix, sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
    command += ["-w", "1", "-k", "egg:fastbody#gthread", "--threads", str(threads), "--timeout", "30"]
    return [*command, "--chdir", str(APPS), app]


def uvicorn_h11(port: int, app: str, *prefix: str) -> list[str]:
    command = [*prefix, sys.executable, "-m", "uvicorn", app, "--app-dir", str(APPS), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--loop", "asyncio", "--ws", "none", "--no-proxy-headers"]
    return [*command, "--http", "fastbody.integrations.uvicorn:H11Protocol"]


# ---- raw HTTP/1.1 over a socket ------------------------------------------------------------------


@dataclass
class Raw:
    """One response read off a raw socket: status, headers (lower-case names; repeated ones
    joined by commas), body; ``reset``: the server reset the connection."""

    status: int
    headers: dict[str, str]
    body: bytes
    reset: bool = False


def exchange(port: int, request: bytes, timeout: float = 10) -> Raw:
    """Send ``request`` (whole, as bytes) on a new connection and read until the server closes
    it; a server that neither answers nor closes within ``timeout`` seconds is a hang."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(request)
        answer, reset = b"", False
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"hang: no end within {timeout} s for {request[:120]!r}")
            try:
                data = client.recv(1 << 20)
            except ConnectionResetError:
                reset = True
                break
            except TimeoutError:
                raise AssertionError(f"hang: nothing for {timeout} s after {request[:120]!r}") from None
            if not data:
                break
            answer += data
    return parse(answer, reset)


def parse(answer: bytes, reset: bool = False) -> Raw:
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        raise AssertionError(f"no response head: {answer[:200]!r}")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "content-length" in headers:
        length = int(headers["content-length"])
        assert len(body) == length, f"body of {len(body)} bytes under Content-Length {length}"
    return Raw(int(status_line.split()[1]), headers, body, reset)


def get(target: bytes, *fields: str) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [line.encode("latin-1") for line in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


# ==== 1. the pipe budget of an unprivileged user, spent ===========================================
#
# Linux counts pipe buffers per user (/proc/sys/fs/pipe-user-pages-soft, 16384 pages = 64 MiB
# here); root (CAP_SYS_RESOURCE) is not counted, so the servers run as `nobody`. What was found
# to spend it here: a helper process of that user opens pipes and grows each to 1 MiB
# (F_SETPIPE_SZ) until the kernel refuses (EPERM, after 64 of them); from then on every new pipe
# of the user gets 2 pages (8 KiB) and cannot be grown. The helper holds them until the test
# class is over, and is killed by pid then (the budget is the user's, shared with every other
# process of `nobody` on this machine: nothing of ours may outlive the class).

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

HOG = r"""
import fcntl, os, sys
held = []
while True:
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        break
    held.append((read_fd, write_fd))
read_fd, write_fd = os.pipe()
print(len(held), fcntl.fcntl(write_fd, fcntl.F_GETPIPE_SZ), flush=True)
sys.stdin.read()
"""


def can_run_as_nobody() -> str | None:
    """Why the servers cannot be run as ``nobody`` here, or None when they can."""
    if os.geteuid() != 0:
        return "not root: cannot start servers as user nobody"
    if shutil.which("setpriv") is None:
        return "setpriv not installed (util-linux)"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "no user nobody"
    if not os.path.exists("/proc/sys/fs/pipe-user-pages-soft"):
        return "no per-user pipe budget on this kernel"
    if int(Path("/proc/sys/fs/pipe-user-pages-soft").read_text()) == 0:
        return "the per-user pipe budget is unlimited (pipe-user-pages-soft = 0)"
    return None


@dataclass
class Hog:
    process: subprocess.Popen[bytes]
    pipes: int
    new_pipe_size: int


BODY = 4 * MIB
CONCURRENT = 40  # transfers at once: 20 socket bodies, 20 pipe bodies
RSS_SLACK_MIB = 16


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    """A directory user ``nobody`` can read (pytest's own tmp directories are root's, 0700)."""
    made = Path(tempfile.mkdtemp(prefix="fastbody-faults-"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="module")
def blob(public: Path) -> tuple[str, str]:
    data = os.urandom(BODY)
    path = public / "blob.bin"
    path.write_bytes(data)
    path.chmod(0o644)
    return str(path), sha(data)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults-logs")


@pytest.fixture(scope="class")
def hog() -> Iterator[Hog]:
    """The pipe budget of ``nobody`` spent, for as long as the class runs."""
    reason = can_run_as_nobody()
    if reason is not None:
        pytest.skip(reason)
    process = subprocess.Popen(
        [*AS_NOBODY, sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        assert len(line) == 2, f"the pipe hog said {line!r} (exit {process.poll()})"
        spent = Hog(process, int(line[0]), int(line[1]))
        # A new pipe of the user's is small and cannot be grown: the budget is spent.
        assert spent.new_pipe_size < 256 * KIB, spent
        yield spent
    finally:
        process.kill()
        process.wait(10)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        process.stdout.close()


@dataclass
class Unprivileged:
    """A server run as ``nobody`` while its pipe budget is spent; ``worker``: the pid that
    serves (gunicorn's worker, uvicorn's one process)."""

    kind: str
    server: Server
    worker: int
    socket_route: str
    pipe_route: str
    extra: list[Server] = field(default_factory=list)

    def holdings(self) -> Held:
        """The worker's holdings; for the proxy, less its idle pooled upstream connections and
        idle pooled pipes (kept on purpose, not leaked: ``proxy_app``'s ``/stats`` counts them)."""
        if self.kind != "proxy":
            return held(self.worker)
        info = self.server.info()
        now = held(self.worker)
        idle, pipes = sum(info["idle"].values()), int(info["pipes"])
        return Held(now.fds - idle - 2 * pipes, now.pipes - 2 * pipes, now.rss_mib)

    def settled(self, baseline: Held, timeout: float = 10) -> Held:
        """``resources.settled`` for ``holdings``."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.holdings()
            back = now.fds <= baseline.fds and now.pipes <= baseline.pipes
            if (back and now.rss_mib <= baseline.rss_mib + RSS_SLACK_MIB) or time.monotonic() > deadline:
                return now
            time.sleep(0.05)


@pytest.fixture(scope="class", params=["gthread", "h11", "proxy"])
def unprivileged(
    request: pytest.FixtureRequest, hog: Hog, logs: Path, blob: tuple[str, str]
) -> Iterator[Unprivileged]:
    kind = request.param
    port = free_port()
    log = logs / f"nobody-{kind}-{port}.log"
    env = {"FASTBODY_SEND_TIMEOUT": "30"}
    extra: list[Server] = []
    if kind == "gthread":
        command = gunicorn_gthread(port, "wsgi_app:app", CONCURRENT + 8, *AS_NOBODY)
        routes = ("/socket?length=1&path=", "/pipe?length=1&path=")
    elif kind == "h11":
        command = uvicorn_h11(port, "asgi_app:app", *AS_NOBODY)
        routes = ("/socket?length=1&path=", "/pipe?length=1&path=")
    else:
        # The upstream (stock uvicorn, root) serves the file; the proxy, run as nobody, relays
        # it socket → socket: spliced through a pooled pipe when it can have one.
        upstream_port = free_port()
        upstream_command = [sys.executable, "-m", "uvicorn", "proxy_upstream_app:app", "--app-dir", str(APPS)]
        upstream_command += ["--host", "127.0.0.1", "--port", str(upstream_port), "--log-level", "warning"]
        extra.append(launch(upstream_command, upstream_port, logs / f"upstream-{upstream_port}.log"))
        env["UPSTREAM"] = extra[0].url
        command = uvicorn_h11(port, "proxy_app:app", *AS_NOBODY)
        routes = ("/api/file?path=", "/api/chunked?path=")
    try:
        server = launch(command, port, log, env=env)
    except BaseException:
        for started in extra:
            stop(started)
        raise
    worker = int(server.info()["pid"])
    assert pwd.getpwuid(os.stat(f"/proc/{worker}").st_uid).pw_name == "nobody"
    yield Unprivileged(kind, server, worker, *routes, extra=extra)
    stop_all(server, worker)
    for started in extra:
        stop(started)
    assert "Traceback" not in server.errors(), server.errors()


class TestPipeBudgetSpent:
    """Socket and pipe bodies from a server whose user has no pipe budget left: the pool gets
    only small pipes, refuses them, and the engine copies; everything arrives whole, and the
    worker's fds, pipes and RSS come back once the load is over."""

    def test_a_socket_body_is_copied(
        self, unprivileged: Unprivileged, blob: tuple[str, str], fault_table: FaultTable
    ) -> None:
        path, digest = blob
        server = unprivileged.server
        url = f"{server.url}{unprivileged.socket_route}{path}"
        assert fetch(url).sha256 == digest  # warm-up
        before, stats = unprivileged.holdings(), server.stats()
        got = fetch(url)
        by_path = moved(stats, server.stats())
        after = unprivileged.settled(before)
        fault_table.record(
            "pipe budget spent (nobody): one socket body",
            f"{unprivileged.kind} as nobody",
            f"{got.status}, {got.size} B, moved {by_path}",
            before,
            after,
        )
        assert (got.status, got.size, got.sha256) == (200, BODY, digest)
        # The pool got only an 8 KiB pipe, refused it, and the engine copied every byte (run
        # as root, or as nobody with budget left, this is {"splice": BODY}).
        assert by_path == {"copy": BODY}, by_path
        assert_released(before, after, rss_slack_mib=RSS_SLACK_MIB)

    def test_concurrent_bodies_arrive_whole(
        self, unprivileged: Unprivileged, blob: tuple[str, str], fault_table: FaultTable
    ) -> None:
        path, digest = blob
        server = unprivileged.server
        socket_url = f"{server.url}{unprivileged.socket_route}{path}"
        pipe_url = f"{server.url}{unprivileged.pipe_route}{path}"
        for url in (socket_url, pipe_url):  # warm-up: imports, the first buffers, threads
            got = fetch(url)
            assert (got.status, got.size, got.sha256) == (200, BODY, digest)
        before, stats = unprivileged.holdings(), server.stats()
        urls = [socket_url, pipe_url] * (CONCURRENT // 2)
        with ThreadPoolExecutor(CONCURRENT) as clients:
            answers = list(clients.map(fetch, urls))
        whole = [(got.status, got.size, got.sha256) == (200, BODY, digest) for got in answers]
        by_path = moved(stats, server.stats())
        after = unprivileged.settled(before)
        fault_table.record(
            f"pipe budget spent (nobody): {CONCURRENT} concurrent socket+pipe bodies",
            f"{unprivileged.kind} as nobody",
            f"{sum(whole)}/{len(whole)} whole; moved {by_path}",
            before,
            after,
        )
        assert all(whole), [(got.status, got.size) for got in answers]
        assert sum(by_path.values()) == CONCURRENT * BODY, by_path
        assert set(by_path) <= {"copy", "splice"}, by_path
        if unprivileged.kind == "proxy":  # both routes relay an upstream socket: all copied
            assert by_path == {"copy": CONCURRENT * BODY}, by_path
        else:
            # Every socket body was copied; the pipe bodies were spliced straight from their
            # own (8 KiB, ungrowable) pipe, which needs no pooled one, or copied.
            assert by_path.get("copy", 0) >= (CONCURRENT // 2) * BODY, by_path
        assert_released(before, after, rss_slack_mib=RSS_SLACK_MIB)
