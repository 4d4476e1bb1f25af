"""Who owns a response's head and body bytes, end to end: the proxy's framing of a chunked body
whose upstream closes right after it, the uvicorn protocols' handling of the app's head
(headers given as an iterator, a head never followed by a body, a second head), a
``ZeroCopyResponse`` promising more than its file holds, the send timeout of the gunicorn
workers and of the engine, and ``fastbody.stats()`` counting every body byte an integration
writes itself.

Real ``python -m uvicorn`` / ``python -m gunicorn`` processes on 127.0.0.1, a raw-socket upstream
in this process, real httpx and raw-socket clients; bodies checked by sha256, paths by the
``fastbody.stats()`` the server answers on ``/stats``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("gunicorn")
pytest.importorskip("starlette")

from conftest import ArrivalWatch  # noqa: E402
from servers import (  # noqa: E402
    MIB,
    PROTOCOLS,
    RawServer,
    Server,
    fetch,
    free_port,
    launch,
    make_certificate,
    moved,
    start_uvicorn,
    stop,
    wait_until,
)

import fastbody  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
KIB = 1 << 10
RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset

ISSUE = "issue 10"


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ownership")


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` on a new connection and read until the server closes it (bounded)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(request)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                data = client.recv(65536)
                if not data:
                    break
                received += data
        except (TimeoutError, ConnectionResetError):
            pass  # a reset or a silent connection: what came so far is the answer
    return received


def status_line(response: bytes) -> bytes:
    return response.split(b"\r\n", 1)[0]


# 1. The proxy: a complete chunked body whose upstream closes right after its last chunk


class ClosingUpstream(RawServer):
    """A raw-socket upstream: each connection gets ``chunks`` chunks of ``size`` bytes in all,
    ``0\\r\\n\\r\\n``, and at once the end of the stream (FIN), in one go; then it waits
    (bounded) for the proxy to close its side, so that nothing is cut by a reset of ours."""

    def __init__(self, data: bytes, chunks: int) -> None:
        self.data, self.chunks = data, chunks
        super().__init__()

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
                step = len(self.data) // self.chunks
                out = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"]
                for start in range(0, len(self.data), step):
                    piece = self.data[start : start + step]
                    out += [b"%x\r\n" % len(piece), piece, b"\r\n"]
                conn.sendall(b"".join([*out, b"0\r\n\r\n"]))
                conn.shutdown(socket.SHUT_WR)  # the FIN right behind the last chunk
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and conn.recv(65536):
                    pass
            except OSError:
                pass  # the proxy closed first


CHUNKED_BODY = 4 * MIB


@pytest.fixture(scope="module")
def chunked_data() -> bytes:
    return os.urandom(CHUNKED_BODY)


@pytest.fixture(scope="module", params=[1, 4], ids=["one-chunk", "four-chunks"])
def closing_upstream(request: pytest.FixtureRequest, chunked_data: bytes) -> Iterator[ClosingUpstream]:
    upstream = ClosingUpstream(chunked_data, request.param)
    yield upstream
    upstream.close()


def start_proxy(tmp: Path, kind: str, upstream: ClosingUpstream) -> Server:
    port = free_port()
    env = {"UPSTREAM": upstream.url, "RAW_UPSTREAM": upstream.url, "FASTBODY_SEND_TIMEOUT": "10"}
    log = tmp / f"proxy-{kind}-{port}.log"
    if kind in PROTOCOLS:
        command = [sys.executable, "-m", "uvicorn", "proxy_app:app", "--app-dir", str(APPS)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--ws", "none", "--no-proxy-headers"]
        command += ["--http", f"fastbody.integrations.uvicorn:{PROTOCOLS[kind]}"]
    else:
        command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
        command += ["-w", "1", "-k", f"egg:fastbody#{kind}", "--chdir", str(APPS), "--timeout", "30"]
        command += ["--threads", "4", "proxy_wsgi_app:app"]
    return launch(command, port, log, env=env)


@pytest.mark.parametrize(
    "kind",
    [
        "h11",
        "httptools",
        "gthread",
    ],
)
def test_chunked_body_then_upstream_close_arrives_whole(
    tmp: Path, closing_upstream: ClosingUpstream, chunked_data: bytes, kind: str
) -> None:
    """A chunked upstream body that is complete (``0\\r\\n\\r\\n``) reaches the client whole and
    properly ended (httpx raises on a chunked body cut before its end), every time, even though
    the upstream closes the connection right after the last chunk; its bytes go by splice."""
    proxy = start_proxy(tmp, kind, closing_upstream)
    try:
        for attempt in range(3):
            before = proxy.stats()
            got = fetch(f"{proxy.url}/raw/chunked-close")
            assert (got.status, got.size, got.sha256) == (200, CHUNKED_BODY, sha(chunked_data)), attempt
            grown = moved(before, proxy.stats())
            assert sum(grown.values()) == CHUNKED_BODY and grown.get("splice", 0) > 0, grown
    finally:
        stop(proxy)


# 2, 3. The uvicorn protocols and the app's head


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def asgi_server(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Server]:
    running = start_uvicorn("asgi_app:app", APPS, tmp, request.param, "asyncio")
    running.http = request.param  # type: ignore[attr-defined]
    yield running
    stop(running)


def test_headers_given_as_an_iterator_are_sent(asgi_server: Server) -> None:
    """``headers`` may be any iterable of pairs: every one of them reaches the client."""
    answer = httpx.get(f"{asgi_server.url}/iter-headers", timeout=10)
    assert answer.status_code == 200
    assert answer.headers.get("content-length") == "5"
    assert answer.headers.get("set-cookie") == "a=1"
    assert answer.headers.get("x-test") == "yes"
    assert answer.content == b"hello"


def test_str_headers_under_h11_are_sent_as_uvicorn_sends_them(asgi_server: Server) -> None:
    """uvicorn's h11 path takes ``str`` header pairs; fastbody's must too."""
    if asgi_server.http != "h11":  # type: ignore[attr-defined]
        pytest.skip("uvicorn's own httptools path takes bytes header pairs only")
    answer = httpx.get(f"{asgi_server.url}/str-headers", timeout=10)
    assert (answer.status_code, answer.headers.get("x-test"), answer.content) == (200, "yes", b"ok")


@pytest.mark.parametrize("route", ["/start-only", "/start-twice"], ids=["start-only", "start-twice"])
def test_the_apps_first_head_is_what_the_client_gets(asgi_server: Server, route: str) -> None:
    """As stock uvicorn does: an app that sends its (length-less) 200 head and then returns
    without a body, or sends a second head, has its first head sent and the connection closed;
    the client never sees a 500 in its place."""
    response = raw_exchange(asgi_server.port, f"GET {route} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_line(response) == b"HTTP/1.1 200 OK", response[:300]
    assert b"HTTP/1.1 500" not in response, response[:300]
    assert b"x-first: 1" in response.lower(), response[:300]


# 4. ZeroCopyResponse(file, count=n) with n past the file's end


@pytest.fixture(scope="module")
def small_file(tmp: Path) -> tuple[str, bytes]:
    data = os.urandom(100 * KIB)
    path = tmp / "small-100k.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def zerocopy_server(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Server]:
    running = start_uvicorn("zerocopy_app:app", APPS, tmp, request.param, "asyncio")
    yield running
    stop(running)


def test_count_past_the_end_of_the_file_is_refused_before_the_head(
    zerocopy_server: Server, small_file: tuple[str, bytes]
) -> None:
    """``ZeroCopyResponse(open(path, "rb"), count=n)`` with n larger than the file: the response
    fails before its head, so the client gets a 500, never a 200 promising n bytes."""
    path, data = small_file
    request = f"GET /file?path={path}&count={2 * len(data)} HTTP/1.1\r\nHost: x\r\n\r\n"
    response = raw_exchange(zerocopy_server.port, request.encode())
    assert status_line(response) == b"HTTP/1.1 500 Internal Server Error", response[:300]
    assert b"200 OK" not in response, response[:300]


def test_count_past_the_end_of_the_file_under_test_client(small_file: tuple[str, bytes]) -> None:
    """The same response in-process under Starlette's ``TestClient`` (the streaming fallback):
    a 500, not a 200 whose Content-Length promises n."""
    from starlette.testclient import TestClient

    spec = importlib.util.spec_from_file_location("zerocopy_app_ownership", APPS / "zerocopy_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path, data = small_file
    with TestClient(module.make_app(None), raise_server_exceptions=False) as client:
        answer = client.get(f"/file?path={path}&count={2 * len(data)}")
    assert answer.status_code == 500, (answer.status_code, answer.headers, len(answer.content))


# 5. Send timeouts: the gunicorn workers' --timeout and the engine's timeout=


GUNICORN_TIMEOUT = 3
STALL_FILE = 64 * MIB


@pytest.fixture(scope="module")
def stall_file(tmp: Path) -> str:
    """A 64 MiB (sparse) file: far more than the socket buffers between server and client hold."""
    path = tmp / "stall-64m.bin"
    with open(path, "wb") as out:
        out.truncate(STALL_FILE)
    return str(path)


@pytest.fixture(scope="module", params=["sync", "gthread"])
def gunicorn_server(request: pytest.FixtureRequest, tmp: Path) -> Iterator[Server]:
    worker = request.param
    port = free_port()
    log = tmp / f"gunicorn-{worker}-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["-k", f"egg:fastbody#{worker}", "--chdir", str(APPS), "--log-level", "info"]
    command += ["--timeout", str(GUNICORN_TIMEOUT), "--graceful-timeout", "3"]
    command += ["--threads", "4"] if worker == "gthread" else []
    running = launch([*command, "wsgi_app:app"], port, log)
    running.worker = worker  # type: ignore[attr-defined]
    yield running
    stop(running)


def stalled_client(port: int) -> socket.socket:
    """A connection whose receive buffer is made small before it connects (so the server's
    sends stall at once), closed by the caller."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KIB)
    client.settimeout(10)
    client.connect(("127.0.0.1", port))
    return client


def test_gunicorn_cuts_off_a_client_that_reads_nothing_after_timeout(
    gunicorn_server: Server, stall_file: str
) -> None:
    """``--timeout 3``: a client that asks for a big file and then reads nothing is cut off
    3 ± 1 s after its last read; the worker is not killed for it.

    How the cut is timed: the server's close cannot be seen from a client that reads nothing
    (its FIN queues behind the unsent body), so the moment is when the worker logs its
    "no progress for" line, polled every 50 ms on its error log. The clock starts when the
    client has read the response head (it reads nothing after that); the server's socket buffer
    fills within milliseconds of it, but the kernel keeps taking bytes for up to about a second
    more while it grows that buffer (autotuning), and that is progress the server sees: so the
    cut comes 3 s after that, within 3 - 1 and 3 + 1.5 s of the stall (it was 12 s)."""
    server = gunicorn_server
    pid = server.info()["pid"]
    mark = len(server.errors())
    client = stalled_client(server.port)
    try:
        client.sendall(f"GET /file?path={stall_file} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert client.recv(1024).startswith(b"HTTP/1.1 200")
        stalled = time.monotonic()
        cut = f"no progress for {float(GUNICORN_TIMEOUT)} s"
        limit = GUNICORN_TIMEOUT + 1.5
        wait_until(lambda: cut in server.errors()[mark:], limit, f"{cut!r} logged after the client stalled")
        elapsed = time.monotonic() - stalled
        assert elapsed >= GUNICORN_TIMEOUT - 1, elapsed
        # The connection is closed indeed: reading now ends before the body's end.
        received = 0
        with pytest.raises(ConnectionResetError):
            while data := client.recv(MIB):
                received += len(data)
            raise ConnectionResetError("closed")  # an orderly close is a cut too
        assert received < STALL_FILE
    finally:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        client.close()  # frees the worker if it is still stuck in the transfer
    assert server.info()["pid"] == pid, server.errors()  # the worker moved on, not killed


ENGINE_TIMEOUT = 2.0


def stalled_pair() -> tuple[socket.socket, socket.socket]:
    """(sender, receiver) on 127.0.0.1 with small buffers; the receiver never reads."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        receiver = stalled_client(listener.getsockname()[1])
        sender, _ = listener.accept()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KIB)
    return sender, receiver


def reset_later(receiver: socket.socket, delay: float) -> threading.Timer:
    """Reset the receiver after ``delay`` s, so a transfer that does not time out by then ends
    (with ``PeerClosedError``) instead of keeping the test waiting."""

    def reset() -> None:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        receiver.close()

    timer = threading.Timer(delay, reset)
    timer.start()
    return timer


@pytest.mark.parametrize(
    "kind",
    [
        "transfer",
        "atransfer",
    ],
)
def test_engine_times_out_a_peer_that_reads_nothing(stall_file: str, kind: str) -> None:
    """``transfer``/``atransfer(sock, file, timeout=2)`` to a peer that never reads raise
    ``TransferTimeout`` 2 ± 1 s after the transfer stops making progress: after the last byte
    reached the peer (which still takes a few bytes now and then after it stopped reading)."""
    sender, receiver = stalled_pair()
    timer = reset_later(receiver, ENGINE_TIMEOUT + 2.5)
    arrivals = ArrivalWatch(receiver)
    try:
        with open(stall_file, "rb") as body:

            def call() -> int:
                if kind == "transfer":
                    return fastbody.transfer(sender, body, timeout=ENGINE_TIMEOUT)
                sender.setblocking(False)
                work = fastbody.atransfer(sender, body, timeout=ENGINE_TIMEOUT)
                return int(asyncio.run(asyncio.wait_for(work, 30)))

            with pytest.raises(fastbody.TransferError) as raised:
                call()
        elapsed = arrivals.idle()
        arrivals.stop()
        assert isinstance(raised.value, fastbody.TransferTimeout), (type(raised.value).__name__, elapsed)
        assert ENGINE_TIMEOUT - 1 <= elapsed <= ENGINE_TIMEOUT + 1, elapsed
        assert 0 < raised.value.sent < STALL_FILE
    finally:
        timer.cancel()
        timer.join(10)
        sender.close()
        receiver.close()


# 6. fastbody.stats() counts the bodies the integrations write themselves


@pytest.mark.parametrize("size", [KIB, 20 * KIB], ids=["1KiB", "20KiB"])
def test_small_file_wrapper_bodies_are_counted(gunicorn_server: Server, tmp: Path, size: int) -> None:
    """A ``wsgi.file_wrapper`` body of a small file (<= 32 KiB, sent with the head in one
    write) is counted in the worker's ``fastbody.stats()``: the counters grow by its size."""
    data = os.urandom(size)
    path = tmp / f"small-{size}.bin"
    path.write_bytes(data)
    before = gunicorn_server.stats()
    got = fetch(f"{gunicorn_server.url}/file?path={path}")
    assert (got.status, got.size, got.sha256) == (200, size, sha(data))
    grown = moved(before, gunicorn_server.stats())
    assert sum(grown.values()) == size and grown.keys() <= {"copy", "sendfile"}, grown


TLS_BODY = MIB


@pytest.fixture(scope="module")
def certificate(tmp: Path) -> tuple[str, str]:
    return make_certificate(tmp)


@pytest.fixture(scope="module")
def tls_file(tmp: Path) -> tuple[str, bytes]:
    data = os.urandom(TLS_BODY)
    path = tmp / "tls-1m.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.mark.parametrize(
    "app,http",
    [("asgi_app:app", "h11"), ("zerocopy_app:app", "httptools")],
    ids=["pathsend-FileResponse-h11", "ZeroCopyResponse-httptools"],
)
def test_bodies_copied_through_tls_are_counted(
    tmp: Path, certificate: tuple[str, str], tls_file: tuple[str, bytes], app: str, http: str
) -> None:
    """Over TLS a pathsend (Starlette ``FileResponse``) or ``ZeroCopyResponse`` body goes out by
    a copy through the transport: ``fastbody.stats()`` grows by exactly the body's bytes."""
    cert, key = certificate
    path, data = tls_file
    running = start_uvicorn(app, APPS, tmp, http, "asyncio", "--ssl-certfile", cert, "--ssl-keyfile", key)
    try:
        before = running.stats()
        with httpx.Client(verify=False, timeout=30) as client:
            got = fetch(f"{running.url}/file?path={path}", client=client)
        assert (got.status, got.size, got.sha256) == (200, TLS_BODY, sha(data))
        grown = moved(before, running.stats())
        assert sum(grown.values()) == TLS_BODY, grown
    finally:
        stop(running)


# ---- a client gone before the head: zero-copy messages dropped as uvicorn drops the others --------


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_zero_copy_after_the_client_went_away(tmp_path: Path, http: str) -> None:
    """uvicorn drops every message to a closed connection, the head included; a zero-copy body
    after that dropped head is the client gone (PeerClosedError), never 'Expected ASGI message
    http.response.start' (a RuntimeError, logged as an app failure)."""
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(256 * 1024))
    apps = Path(__file__).resolve().parent / "apps"
    server = start_uvicorn(
        "late_app:app", apps, tmp_path, http, "asyncio", env={"FASTBODY_TEST_FILE": str(data)}
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
        wait_until(lambda: server.info()["outcomes"], 10, "the app answered")
        assert server.info()["outcomes"] == ["PeerClosedError: the client went away"]
    finally:
        stop(server)
    assert "Traceback" not in server.errors(), server.errors()
