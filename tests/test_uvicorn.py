"""fastbody's uvicorn protocols, end to end: real ``python -m uvicorn`` processes (h11 and
httptools, asyncio and uvloop) on 127.0.0.1, real httpx and raw-socket clients, bodies checked by
sha256, and ``fastbody.stats()`` read from the server to prove which path moved them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
h11 = pytest.importorskip("h11")

from servers import (  # noqa: E402
    MIB,
    PROTOCOLS,
    UVICORN_CONFIGS,
    Server,
    answers,
    fetch,
    free_port,
    launch,
    make_certificate,
    moved,
    start_uvicorn,
    stop,
    wait_until,
)

from fastbody.integrations.uvicorn import declared_length, holds_start, with_content_length  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
SIZE = 32 * MIB


def start(tmp: Path, http: str, loop: str, *options: str, env: dict[str, str] | None = None) -> Server:
    environment = {"FASTBODY_TEST_STATIC": str(tmp / "static"), **(env or {})}
    return start_uvicorn("asgi_app:app", APPS, tmp, http, loop, *options, env=environment)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uvicorn")


@pytest.fixture(scope="module")
def blob(tmp: Path) -> tuple[str, bytes]:
    """A 32 MiB file of random bytes (also served by StaticFiles as ``/static/blob.bin``)."""
    data = os.urandom(SIZE)
    (tmp / "static").mkdir()
    path = tmp / "static" / "blob.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture(scope="module", params=UVICORN_CONFIGS, ids=[f"{h}-{loop}" for h, loop in UVICORN_CONFIGS])
def server(request: pytest.FixtureRequest, tmp: Path, blob: tuple[str, bytes]) -> Iterator[Server]:
    http, loop = request.param
    running = start(tmp, http, loop, env={"FASTBODY_SEND_TIMEOUT": "2"})
    yield running
    stop(running)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Pure decisions


def test_head_is_held_only_when_it_has_no_length() -> None:
    assert holds_start(200, "GET", [])
    assert not holds_start(200, "GET", [(b"Content-Length", b"3")])
    assert not holds_start(200, "GET", [(b"transfer-encoding", b"chunked")])
    assert not holds_start(200, "HEAD", [])
    assert not holds_start(304, "GET", [])
    assert not holds_start(204, "GET", [])
    assert not holds_start(200, "GET", [(b"content-type", b"text/event-stream; charset=utf-8")])


def test_content_length_is_read_and_added() -> None:
    assert declared_length([(b"x", b"1"), (b"content-length", b"42")]) == 42
    assert declared_length([]) is None
    start = {"type": "http.response.start", "status": 200, "headers": [(b"x", b"1")]}
    assert with_content_length(start, 7)["headers"] == [(b"x", b"1"), (b"content-length", b"7")]
    assert start["headers"] == [(b"x", b"1")]  # not changed in place


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_zero_copy_waits_for_the_transport_buffer(loop_kind: str) -> None:
    """Bytes the transport still holds go out before the engine writes to the socket itself."""
    if loop_kind == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop not installed")
    from uvicorn.protocols.http.flow_control import FlowControl

    from fastbody.integrations.uvicorn import ZeroCopySend

    class Flowing(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.flow = FlowControl(transport)  # type: ignore[arg-type]

        def pause_writing(self) -> None:
            self.flow.pause_writing()

        def resume_writing(self) -> None:
            self.flow.resume_writing()

    async def main() -> tuple[int, int, tuple[int, int], tuple[int, int]]:
        ours, theirs = socket.socketpair()
        transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(Flowing, ours)
        limits = transport.get_write_buffer_limits()
        transport.write(b"x" * (8 * MIB))
        buffered = transport.get_write_buffer_size()
        cycle = types.SimpleNamespace(transport=transport, flow=protocol.flow, disconnected=False)
        reader = threading.Thread(target=lambda: _drain_socket(theirs, 8 * MIB))
        reader.start()
        await ZeroCopySend(cycle)._drain_transport()
        left = transport.get_write_buffer_size()
        reader.join(30)
        after = transport.get_write_buffer_limits()
        transport.close()
        theirs.close()
        return buffered, left, limits, after

    buffered, left, limits, after = _run_loop(loop_kind, main())
    assert buffered > 0  # the case under test: the transport did hold bytes
    assert left == 0
    assert after == limits


def _drain_socket(sock: socket.socket, size: int) -> None:
    time.sleep(0.2)
    while size > 0 and (data := sock.recv(MIB)):
        size -= len(data)


def _run_loop(loop_kind: str, main: Any) -> Any:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


# Unmodified Starlette and FastAPI responses


@pytest.mark.parametrize("route", ["/file?path={path}", "/fastapi/file?path={path}", "/static/blob.bin"])
def test_file_responses_go_by_sendfile(server: Server, blob: tuple[str, bytes], route: str) -> None:
    path, data = blob
    before = server.stats()
    got = fetch(server.url + route.format(path=path))
    assert (got.status, got.size, got.sha256) == (200, len(data), sha(data))
    assert got.headers["content-length"] == str(len(data))
    assert moved(before, server.stats()) == {"sendfile": len(data)}


def test_head_sends_no_body(server: Server, blob: tuple[str, bytes]) -> None:
    path, data = blob
    before = server.stats()
    got = fetch(f"{server.url}/file?path={path}", method="HEAD")
    assert (got.status, got.size, got.headers["content-length"]) == (200, 0, str(len(data)))
    assert moved(before, server.stats()) == {}


# zerocopysend and splicesend


@pytest.mark.parametrize("length", ["1", "0"], ids=["content-length", "chunked"])
@pytest.mark.parametrize("parts", [1, 3])
def test_zerocopysend_ranges(server: Server, blob: tuple[str, bytes], length: str, parts: int) -> None:
    path, data = blob
    offset, count = 1000, 20 * MIB + 7
    before = server.stats()
    got = fetch(
        f"{server.url}/zerocopy?path={path}&offset={offset}&count={count}&parts={parts}&length={length}"
    )
    expected = b"start:" + data[offset : offset + count]
    assert (got.status, got.size, got.sha256) == (200, len(expected), sha(expected))
    if length == "1":
        assert got.headers["content-length"] == str(len(expected))
    else:
        assert got.headers["transfer-encoding"] == "chunked"
    assert moved(before, server.stats()).get("sendfile", 0) >= count - parts * 32 * 1024


def test_zerocopysend_after_a_big_body_message(server: Server, blob: tuple[str, bytes]) -> None:
    """16 MiB written through the transport are still buffered when the file's bytes start: they
    must wait until the transport has sent them all, or the body comes out of order."""
    path, data = blob
    prefix = 16 * MIB
    got = fetch(f"{server.url}/zerocopy?path={path}&prefix={prefix}")
    expected = b"start:" + b"p" * prefix + data
    assert (got.status, got.size, got.sha256) == (200, len(expected), sha(expected))


def test_zerocopysend_without_length_gets_one(server: Server, blob: tuple[str, bytes]) -> None:
    """A head without Content-Length is held until the body says how long it is."""
    path, data = blob
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(f"GET /pipe?path={path}&length=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = client.recv(4096).split(b"\r\n\r\n")[0].lower()
    assert b"content-length: %d" % len(data) in head
    assert b"transfer-encoding" not in head


@pytest.mark.parametrize("route", ["pipe", "socket"])
@pytest.mark.parametrize("length", ["1", "0"], ids=["count", "chunked"])
def test_splicesend_socket_and_pipe(server: Server, blob: tuple[str, bytes], route: str, length: str) -> None:
    path, data = blob
    before = server.stats()
    got = fetch(f"{server.url}/{route}?path={path}&length={length}")
    assert (got.status, got.size, got.sha256) == (200, len(data), sha(data))
    if length == "0":
        assert got.headers["transfer-encoding"] == "chunked"
    delta = moved(before, server.stats())
    assert delta.get("splice", 0) >= len(data) * 0.9, delta  # pieces under 32 KiB are copied
    assert delta.get("splice", 0) + delta.get("copy", 0) <= len(data) + 4096  # /stats itself


def test_http10_client(server: Server, blob: tuple[str, bytes]) -> None:
    path, data = blob
    for route in (f"/file?path={path}", f"/pipe?path={path}"):
        body = _exchange(server.port, [route], http10=True)
        assert sha(body[0]) == sha(data), route


def _exchange(port: int, targets: list[str], http10: bool = False) -> list[bytes]:
    """Send GET requests for ``targets`` at once on one connection (pipelined); the response
    bodies, each parsed by its own h11 client connection."""
    version = "1.0" if http10 else "1.1"
    host = "" if http10 else "Host: x\r\n"
    requests = "".join(f"GET {target} HTTP/{version}\r\n{host}\r\n" for target in targets)
    bodies: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(requests.encode())
        left = b""
        for target in targets:
            client = h11.Connection(h11.CLIENT)
            client.send(h11.Request(method="GET", target=target, headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
            if left:  # (b"" would mean the end of the connection to h11)
                client.receive_data(left)
            body = bytearray()
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(sock.recv(MIB))
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            bodies.append(bytes(body))
            left = client.trailing_data[0]
    return bodies


def test_keep_alive_and_pipelining_after_zero_copy(server: Server, blob: tuple[str, bytes]) -> None:
    path, data = blob
    targets = [f"/file?path={path}", f"/pipe?path={path}", f"/zerocopy?path={path}&count=10", "/stats"]
    bodies = _exchange(server.port, targets)
    assert [sha(body) for body in bodies[:2]] == [sha(data), sha(data)]
    assert bodies[2] == b"start:" + data[:10]
    assert b'"stats"' in bodies[3]
    with httpx.Client(timeout=30) as client:  # httpx reuses its connection
        for _ in range(3):
            assert fetch(f"{server.url}/file?path={path}", client=client).sha256 == sha(data)


# Faults


def test_short_source_closes_the_connection(server: Server, blob: tuple[str, bytes]) -> None:
    path, data = blob
    with pytest.raises(httpx.RemoteProtocolError):
        fetch(f"{server.url}/short?path={path}")
    # A count past the file's end is refused before a byte of it moves: the head is out, so the
    # connection is closed (uvicorn logs the app's error).
    wait_until(lambda: "bytes the file holds" in server.errors(), 10, "refused count logged")
    assert fetch(f"{server.url}/file?path={path}").sha256 == sha(data)  # still serving


def test_count_past_the_file_under_a_held_head_is_a_500(server: Server, blob: tuple[str, bytes]) -> None:
    """The head had no length, so the server still held it: the refused count gets uvicorn's 500,
    not a 200 head that promises bytes the file does not have."""
    path, data = blob
    got = httpx.get(f"{server.url}/short-held?path={path}", timeout=30)
    assert got.status_code == 500
    wait_until(lambda: "bytes the file holds" in server.errors(), 10, "refused count logged")
    assert fetch(f"{server.url}/file?path={path}").sha256 == sha(data)  # still serving


def test_a_send_cancelled_mid_body_closes_the_connection(server: Server, blob: tuple[str, bytes]) -> None:
    """The framing counted the whole piece before it went: after a cancellation the response can
    only end by closing the connection, never a short body followed by the next response on
    the same connection (a second request is pipelined behind the first to show it)."""
    path, data = blob
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        client.sendall(f"GET /cancelled?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        client.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)  # the client reads nothing meanwhile: the send is still under way when cancelled
        received = b""
        with contextlib.suppress(ConnectionResetError):  # an abort may end it with a reset
            while chunk := client.recv(1 << 20):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) < len(data)  # cut short, and closed
    assert b'"stats"' not in received  # nothing more on that connection
    assert fetch(f"{server.url}/file?path={path}").sha256 == sha(data)  # still serving


@pytest.mark.parametrize("route", ["file", "pipe", "socket"])
def test_client_disconnect_mid_body(server: Server, blob: tuple[str, bytes], route: str) -> None:
    path, data = blob
    fetch(f"{server.url}/{route}?path={path}")  # settle lazily made fds (pipe pool)
    baseline = server.info()["fds"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(f"GET /{route}?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 2 * MIB:
            received += len(client.recv(MIB))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_until(lambda: server.info()["fds"] <= baseline, 10, f"server fd count back to {baseline}")
    assert fetch(f"{server.url}/file?path={path}").sha256 == sha(data)


def test_client_leaving_a_quiet_stream_is_noticed_at_once(server: Server) -> None:
    """The server waits for a quiet source (no transfer running): the client's going away must
    end that wait (and free the pipe), not the send timeout some seconds later."""
    baseline = server.info()["fds"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(b"GET /idle-pipe HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"hello" not in got:
            got += client.recv(4096)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    wait_until(lambda: "client went away after 6 bytes of GET /idle-pipe" in server.errors(), 10, "noticed")
    assert "cut off after 6 bytes of GET /idle-pipe" not in server.errors()
    wait_until(lambda: server.info()["fds"] <= baseline, 10, f"server fd count back to {baseline}")


def test_client_that_stops_reading_is_cut_off(server: Server, blob: tuple[str, bytes]) -> None:
    """FASTBODY_SEND_TIMEOUT=2: the stalled connection is closed; the loop answers meanwhile."""
    path, data = blob
    baseline = server.info()["fds"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        client.sendall(f"GET /file?path={path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.5)
        started = time.monotonic()
        assert server.stats()  # another connection is answered while that one is stuck
        assert time.monotonic() - started < 1.5
        wait_until(lambda: "no progress for 2.0 s" in server.errors(), 15, "client cut off")
        received = 0
        with pytest.raises(ConnectionResetError):
            while data_ := client.recv(MIB):
                received += len(data_)
            raise ConnectionResetError("closed")  # an orderly close is a cut too
        assert received < len(data)
    wait_until(lambda: server.info()["fds"] <= baseline, 10, f"server fd count back to {baseline}")


# Fallbacks and the gunicorn worker


@pytest.mark.parametrize("http", list(PROTOCOLS))
def test_tls_copies(tmp: Path, blob: tuple[str, bytes], http: str) -> None:
    path, data = blob
    cert, key = make_certificate(tmp)
    running = start(tmp, http, "asyncio", "--ssl-certfile", cert, "--ssl-keyfile", key)
    try:
        with httpx.Client(verify=False, timeout=60) as client:
            wait_until(lambda: answers(client, f"{running.url}/stats"), 30, "TLS server up")
            before = running.stats()
            for route in (f"/file?path={path}", f"/pipe?path={path}", f"/pipe?path={path}&length=1"):
                got = fetch(running.url + route, client=client)
                assert (got.status, got.sha256) == (200, sha(data)), route
            # the engine reads and counts every byte; the transport encrypts them
            assert moved(before, running.stats()) == {"copy": 3 * len(data)}
    finally:
        stop(running)


def test_gunicorn_uvicorn_worker(tmp: Path, blob: tuple[str, bytes]) -> None:
    pytest.importorskip("uvicorn_worker")
    path, data = blob
    port = free_port()
    log = tmp / f"gunicorn-uvicorn-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}", "-w", "1"]
    command += ["-k", "egg:fastbody#uvicorn", "--chdir", str(APPS), "asgi_app:app"]
    running = launch(command, port, log)
    try:
        before = running.stats()
        got = fetch(f"{running.url}/file?path={path}")
        assert got.sha256 == sha(data)
        assert moved(before, running.stats()) == {"sendfile": len(data)}
    finally:
        stop(running)
