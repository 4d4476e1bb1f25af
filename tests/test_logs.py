"""Logs, read from real server processes' output: uvicorn's (``python -m uvicorn --http
fastbody.integrations.uvicorn:...``, h11 and httptools) and gunicorn's (fastbody's gthread
worker). Each response's line with its body bytes and path beside uvicorn's access line (none
with ``--no-access-log``); the proxy's 502/504 generic to the client, the upstream named in the
server's error log, in the server's format; an upstream that resets or ends mid-body logged as
an upstream failure; a client gone mid-body and a source that ends short: one line each, never a
traceback."""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from servers import MIB, RawServer, Server, fetch, free_port, launch, start_uvicorn, stop, wait_until  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
SIZE = 8 * MIB
KINDS = ["h11", "httptools"]


class Upstream(RawServer):
    """A raw-socket upstream: ``/ok`` (1 MiB, Content-Length), ``/reset`` (1 MiB of 4, then a
    reset), ``/short`` (1 MiB of 2, then the close), ``/slow`` (nothing for 3 s)."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    got = conn.recv(65536)
                    if not got:
                        return
                    head += got
                path = head.split(b" ", 2)[1]
                body = b"x" * MIB
                if path == b"/slow":
                    self.stopping.wait(3)
                    return
                length = {b"/ok": MIB, b"/reset": 4 * MIB, b"/short": 2 * MIB}.get(path, MIB)
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % length)
                conn.sendall(body)
                if path == b"/reset":
                    self.stopping.wait(0.3)  # the proxy is forwarding by now
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return  # closed with SO_LINGER 0: a reset
                conn.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and conn.recv(65536):
                    pass
            except OSError:
                pass


class Mark:
    """What a server logged since this mark."""

    def __init__(self, server: Server) -> None:
        self.server, self.at = server, len(server.errors())

    def new(self) -> str:
        return self.server.errors()[self.at :]

    def lines(self, word: str) -> list[str]:
        return [line for line in self.new().splitlines() if word in line]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def big(tmp: Path) -> str:
    path = tmp / "big.bin"
    path.write_bytes(os.urandom(SIZE))
    return str(path)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def dead() -> int:
    return free_port()  # bound once, then released: nothing listens there


def environment(upstream: Upstream, dead: int) -> dict[str, str]:
    return {
        "RAW_UPSTREAM": upstream.url,
        "DEAD_UPSTREAM": f"http://127.0.0.1:{dead}",
        "FASTBODY_SEND_TIMEOUT": "10",
    }


def start(tmp: Path, http: str, upstream: Upstream, dead: int, *options: str) -> Server:
    env = environment(upstream, dead)
    return start_uvicorn("logs_app:app", APPS, tmp, http, "asyncio", "--ws", "none", *options, env=env)


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, tmp: Path, upstream: Upstream, dead: int) -> Iterator[Server]:
    if request.param == "httptools":
        pytest.importorskip("httptools")
    running = start(tmp, request.param, upstream, dead)
    yield running
    stop(running)


def quiet(logged: str) -> None:
    """No traceback, and no second report by uvicorn, in what was logged."""
    assert "Traceback" not in logged, logged
    assert "Exception in ASGI application" not in logged, logged
    assert "ASGI callable returned without" not in logged, logged


# The access log


def access_line(path: str, status: int, size: int, by: str | None) -> re.Pattern[str]:
    moved = f"{size} bytes" + (f" by {by}" if by else "")
    return re.compile(
        rf'^INFO: +fastbody: 127\.0\.0\.1:\d+ - "GET {re.escape(path)} HTTP/1\.1" {status} {moved}$', re.M
    )


def test_access_line_with_bytes_and_path(server: Server, big: str) -> None:
    mark = Mark(server)
    assert fetch(f"{server.url}/file?path={big}").size == SIZE
    assert server.get("/plain").content == b"hello"
    assert fetch(f"{server.url}/raw/ok").size == MIB
    assert httpx.head(f"{server.url}/plain").status_code == 200
    expected = {
        f"/file?path={big}": (200, SIZE, "sendfile"),
        "/plain": (200, 5, "copy"),
        "/raw/ok": (200, MIB, "splice"),
    }
    for path, (status, size, by) in expected.items():
        line = access_line(path, status, size, by)
        wait_until(lambda: line.search(mark.new()), 10, f"the line of {path}")  # noqa: B023
        # uvicorn's own access line is there too, unchanged
        assert re.search(
            rf'^INFO: +127\.0\.0\.1:\d+ - "GET {re.escape(path)} HTTP/1\.1" 200 OK$', mark.new(), re.M
        )
    # (the line is written when the response ends, which the client may see a moment before)
    head = re.compile(r'"HEAD /plain HTTP/1\.1" 200 0 bytes$', re.M)
    wait_until(lambda: head.search(mark.new()), 10, "the line of HEAD /plain")
    # One per response; a /stats line of before the mark may land after it (written at its end).
    assert len([line for line in mark.lines("fastbody: 127.0.0.1") if "/stats" not in line]) == 4


@pytest.mark.parametrize(
    "option", [["--no-access-log"], ["--log-level", "warning"]], ids=["no-access-log", "warning"]
)
@pytest.mark.parametrize("http", KINDS)
def test_no_access_line_when_uvicorn_writes_none(
    tmp: Path, upstream: Upstream, dead: int, big: str, http: str, option: list[str]
) -> None:
    if http == "httptools":
        pytest.importorskip("httptools")
    server = start(tmp, http, upstream, dead, *option)
    try:
        assert fetch(f"{server.url}/file?path={big}").size == SIZE
        assert server.get("/plain").content == b"hello"
        time.sleep(0.5)
        assert "fastbody: 127.0.0.1" not in server.errors()
        assert '"GET /plain HTTP/1.1" 200' not in server.errors()
    finally:
        stop(server)


# The proxy: generic 502/504, the upstream named in the log


def test_502_is_generic_and_the_log_names_the_upstream(server: Server, dead: int) -> None:
    mark = Mark(server)
    answer = httpx.get(f"{server.url}/dead/anything", timeout=30)
    assert (answer.status_code, answer.text) == (502, "Bad Gateway\n")
    assert str(dead) not in answer.text
    line = re.compile(
        rf"^ERROR: +proxy: GET http://127\.0\.0\.1:{dead}/anything: upstream unreachable: .+; "
        r"answered 502 Bad Gateway$",
        re.M,
    )
    wait_until(lambda: line.search(mark.new()), 10, "the refusal logged, naming the upstream")
    quiet(mark.new())


def test_504_is_generic(server: Server, upstream: Upstream) -> None:
    mark = Mark(server)
    answer = httpx.get(f"{server.url}/slow/slow", timeout=30)
    assert (answer.status_code, answer.text) == (504, "Gateway Timeout\n")
    line = re.compile(
        rf"^ERROR: +proxy: GET http://127\.0\.0\.1:{upstream.port}/slow: "
        r"no response from upstream within 1\.0 s; answered 504 Gateway Timeout$",
        re.M,
    )
    wait_until(lambda: line.search(mark.new()), 10, "the timeout logged")


# Failures mid-body: one line each, no traceback


def test_upstream_reset_mid_body_is_an_upstream_failure(server: Server) -> None:
    mark = Mark(server)
    with pytest.raises(httpx.RemoteProtocolError):
        fetch(f"{server.url}/raw/reset")
    line = re.compile(
        rf"^ERROR: +fastbody: upstream reset after \d+ of {4 * MIB} bytes of GET /raw/reset: "
        r"connection closed$",
        re.M,
    )
    wait_until(lambda: line.search(mark.new()), 10, "the reset logged")
    time.sleep(0.3)
    logged = mark.new()
    assert "went away" not in logged
    assert len(mark.lines("upstream reset")) == 1, logged
    assert len([line for line in logged.splitlines() if line.startswith(("ERROR", "WARNING"))]) == 1, logged
    quiet(logged)


def test_upstream_closing_mid_body_is_an_upstream_failure(server: Server) -> None:
    mark = Mark(server)
    with pytest.raises(httpx.RemoteProtocolError):
        fetch(f"{server.url}/raw/short")
    line = f"fastbody: upstream closed after {MIB} of {2 * MIB} bytes of GET /raw/short: connection closed"
    wait_until(lambda: line in mark.new(), 10, "the early close logged")
    time.sleep(0.3)
    logged = mark.new()
    assert len([line for line in logged.splitlines() if line.startswith(("ERROR", "WARNING"))]) == 1, logged
    quiet(logged)


def test_client_gone_mid_body_is_one_line(server: Server, big: str) -> None:
    mark = Mark(server)
    client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    client.sendall(f"GET /file?path={big} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = 0
    while received < MIB:
        got = client.recv(256 << 10)
        assert got
        received += len(got)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    line = re.compile(rf"^INFO: +fastbody: client went away after \d+ of {SIZE} bytes of GET /file$", re.M)
    wait_until(lambda: line.search(mark.new()), 10, "the disconnect logged")
    time.sleep(0.3)
    logged = mark.new()
    assert len(mark.lines("went away")) == 1, logged
    assert not [line for line in logged.splitlines() if line.startswith(("ERROR", "WARNING"))], logged
    quiet(logged)


def test_short_source_is_one_line(server: Server, big: str, tmp: Path) -> None:
    shrinking = tmp / f"shrinking-{server.port}.bin"
    shrinking.write_bytes(Path(big).read_bytes())
    mark = Mark(server)
    with pytest.raises(httpx.RemoteProtocolError):
        fetch(f"{server.url}/shrinks/?path={shrinking}")
    line = f"ERROR:    fastbody: body ended after 1000 of {SIZE} bytes of GET /shrinks/: connection closed"
    wait_until(lambda: line in mark.new(), 10, "the short body logged")
    time.sleep(0.3)
    logged = mark.new()
    assert len([line for line in logged.splitlines() if line.startswith(("ERROR", "WARNING"))]) == 1, logged
    quiet(logged)
    assert server.get("/plain").content == b"hello"  # and the server serves on


# gunicorn


@pytest.fixture(scope="module")
def gunicorn(tmp: Path, upstream: Upstream, dead: int) -> Iterator[Server]:
    pytest.importorskip("gunicorn")
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
    command += ["-w", "1", "-k", "egg:fastbody#gthread", "--threads", "4", "--chdir", str(APPS)]
    command += [
        "--access-logfile",
        "-",
        "--access-logformat",
        "access %(r)s %(s)s %(B)s %({fastbody.path}e)s",
    ]
    running = launch(
        [*command, "logs_wsgi_app:app"], port, tmp / f"gunicorn-{port}.log", env=environment(upstream, dead)
    )
    yield running
    stop(running)


def test_gunicorn_502_is_generic_and_logged_in_gunicorns_error_log(gunicorn: Server, dead: int) -> None:
    mark = Mark(gunicorn)
    answer = httpx.get(f"{gunicorn.url}/dead/anything", timeout=30)
    assert (answer.status_code, answer.text) == (502, "Bad Gateway\n")
    line = re.compile(
        rf"^\[[^]]+\] \[\d+\] \[ERROR\] proxy: GET http://127\.0\.0\.1:{dead}/anything: "
        r"upstream unreachable: .+; answered 502 Bad Gateway$",
        re.M,
    )
    wait_until(lambda: line.search(mark.new()), 10, "the refusal in gunicorn's error log format")


def test_gunicorn_access_log_bytes(gunicorn: Server, big: str) -> None:
    mark = Mark(gunicorn)
    assert fetch(f"{gunicorn.url}/file?path={big}").size == SIZE
    wait_until(
        lambda: f"access GET /file?path={big} HTTP/1.1 200 {SIZE} " in mark.new(), 10, "the access line"
    )


def test_gunicorn_access_log_path(gunicorn: Server, big: str) -> None:
    mark = Mark(gunicorn)
    assert fetch(f"{gunicorn.url}/file?path={big}").size == SIZE
    wait_until(
        lambda: f"access GET /file?path={big} HTTP/1.1 200 {SIZE} sendfile" in mark.new(), 5, "the path"
    )


def test_gunicorn_upstream_reset_is_an_upstream_failure(gunicorn: Server) -> None:
    mark = Mark(gunicorn)
    with pytest.raises(httpx.RemoteProtocolError):
        fetch(f"{gunicorn.url}/raw/reset")
    wait_until(lambda: "fastbody: upstream reset after" in mark.new(), 5, "the reset logged")
    assert "went away" not in mark.new()
    quiet(mark.new())


def test_blame_with_a_pipelined_request_waiting() -> None:
    """A client with a pipelined request unread is still there: the reset was the upstream's."""
    from fastbody import PeerClosedError
    from fastbody.integrations.failures import SourceFailed, blame

    client, client_peer = socket.socketpair()
    upstream, upstream_peer = socket.socketpair()
    with client, client_peer, upstream, upstream_peer:
        client_peer.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")  # waiting, unread
        reset = PeerClosedError.make(104, "reset", 262144)
        assert isinstance(blame(reset, upstream, client), SourceFailed)
        client_peer.close()  # now the client has gone: its own
        assert not isinstance(blame(reset, upstream, client), SourceFailed)
