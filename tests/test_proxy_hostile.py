"""The reverse proxy against hostile upstreams: heads whose end h11 and a naive reader would put
in different places, statuses a server cannot send, chunk-size lines h11 refuses, heads that
never end. The proxy runs in real ``python -m uvicorn`` (fastbody's h11 and httptools protocols)
and ``python -m gunicorn`` (fastbody's gthread worker) processes in front of a raw-socket
upstream in this process; the client is a raw socket, its bytes parsed by h11."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastbody.framing import FramingError, chunk_size

httpx = pytest.importorskip("httpx")
h11 = pytest.importorskip("h11")
pytest.importorskip("uvicorn")
pytest.importorskip("gunicorn")
pytest.importorskip("starlette")

from servers import RawServer, Server, free_port, launch, stop  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
KINDS = ["h11", "httptools", "gthread"]
PROTOCOLS = {"h11": "H11Protocol", "httptools": "HttpToolsProtocol"}

OK = b"HTTP/1.1 200 OK\r\n"
CANNED = {
    # h11 ends this head at the bare-LF blank line (body: hello); a reader looking for CRLF CRLF
    # ends it after "hello", and the next five bytes (WORLD) pass for the body.
    "/bare-lf": OK + b"Content-Length: 5\n\nhello\r\n\r\nWORLD",
    "/bare-lf-after": OK + b"Content-Length: 5\r\nX-A: b\n\nhello\r\n\r\nWORLD",
    "/status-999": b"HTTP/1.1 999 Weird\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    "/status-600": b"HTTP/1.1 600 Weird\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    "/status-299": b"HTTP/1.1 299 Odd\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    "/chunk-ext-lf": OK + b"Transfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
    # h11 ends these trailers at the bare-LF blank line; a CRLF reader one line later.
    "/trailer-lf": OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: a\n\r\n\r\n",
    # Not RFC 9112 7.1.1's chunk-ext grammar (a space inside a name; an empty value).
    "/chunk-ext-space": OK + b"Transfer-Encoding: chunked\r\n\r\n5;a b\r\nhello\r\n0\r\n\r\n",
    "/chunk-ext-empty": OK + b"Transfer-Encoding: chunked\r\n\r\n5;a=\r\nhello\r\n0\r\n\r\n",
}


class HostileUpstream(RawServer):
    """Answers each request on a connection by its path: canned bytes (``CANNED``), or bytes
    sent slowly; until the proxy closes the connection (or 5 s without a request)."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while not self.stopping.is_set():
                    while b"\r\n\r\n" not in data:
                        got = conn.recv(65536)
                        if not got:
                            return
                        data += got
                    head, _, data = data.partition(b"\r\n\r\n")
                    self.answer(conn, head.split(b" ", 2)[1].decode())
            except OSError:
                pass  # the proxy closed first (what some cases test), or went quiet

    def answer(self, conn: socket.socket, path: str) -> None:
        if path in CANNED:
            conn.sendall(CANNED[path])
        elif path == "/chunk-ext-lf-later":  # the head and a first chunk, then the bad line
            conn.sendall(OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            self.stopping.wait(0.3)
            conn.sendall(b"5;a\nb\r\nworld\r\n0\r\n\r\n")
        elif path == "/chunk-ext-lf-first-later":  # the head, then (later) a bad first line
            conn.sendall(OK + b"Transfer-Encoding: chunked\r\n\r\n")
            self.stopping.wait(0.3)
            conn.sendall(b"5;a\nb\r\nhello\r\n0\r\n\r\n")
        elif path == "/trickle-head":  # one byte each 0.25 s
            for byte in OK + b"Content-Length: 5\r\n\r\nhello":
                if self.stopping.wait(0.25):
                    return
                conn.sendall(bytes([byte]))
        elif path == "/processing":  # sixteen 102 heads, 0.5 s apart, then the answer
            for _ in range(16):
                conn.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
                if self.stopping.wait(0.5):
                    return
            conn.sendall(OK + b"Content-Length: 5\r\n\r\nhello")
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture(scope="module")
def upstream() -> Iterator[HostileUpstream]:
    server = HostileUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module", params=KINDS)
def proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: HostileUpstream
) -> Iterator[Server]:
    kind, port = request.param, free_port()
    log = tmp_path_factory.mktemp("hostile") / f"proxy-{kind}-{port}.log"
    if kind in PROTOCOLS:
        command = [sys.executable, "-m", "uvicorn", "hostile_proxy_app:app", "--app-dir", str(APPS)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--ws", "none", "--no-proxy-headers"]
        command += ["--http", f"fastbody.integrations.uvicorn:{PROTOCOLS[kind]}"]
    else:
        command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-b", f"127.0.0.1:{port}"]
        command += ["-w", "1", "-k", f"egg:fastbody#{kind}", "--chdir", str(APPS), "--timeout", "30"]
        command += ["--threads", "4", "hostile_proxy_wsgi_app:app"]
    running = launch(command, port, log, env={"RAW_UPSTREAM": upstream.url, "FASTBODY_SEND_TIMEOUT": "10"})
    running.kind = kind  # type: ignore[attr-defined]
    yield running
    stop(running)


@dataclass
class Got:
    status: int | None
    body: bytes
    complete: bool  # the response ended as framed (h11 saw its end)
    seconds: float


def get(proxy: Server, path: str) -> Got:
    """One request on a raw connection (``Connection: close``), read to the proxy's close."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /raw%s HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while got := sock.recv(65536):
            data += got
    seconds = time.monotonic() - started
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "proxy")]))
    client.receive_data(data)
    client.receive_data(b"")
    status, body, complete = None, b"", False
    try:
        while (event := client.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                complete = True
                break
            elif isinstance(event, h11.ConnectionClosed):
                break
    except h11.RemoteProtocolError:
        pass  # cut off mid-body: not complete
    return Got(status, body, complete, seconds)


def idle(proxy: Server) -> int:
    return int(proxy.info()["idle"])


# 1. Where a head ends


@pytest.mark.parametrize("path", ["/bare-lf", "/bare-lf-after"])
def test_bare_lf_head_is_read_where_h11_ends_it_or_refused(proxy: Server, path: str) -> None:
    got = get(proxy, path)
    assert got.body != b"WORLD"
    assert (got.status, got.body, got.complete) in [(200, b"hello", True), (502, b"Bad Gateway\n", True)]
    assert idle(proxy) == 0  # bytes h11 did not consume were in it: never pooled


# 2. Statuses


@pytest.mark.parametrize("path", ["/status-999", "/status-600"])
def test_status_outside_100_to_599_is_502(proxy: Server, path: str) -> None:
    got = get(proxy, path)
    assert (got.status, got.complete) == (502, True)


def test_status_without_a_phrase(proxy: Server) -> None:
    """299 has no phrase in http.HTTPStatus: uvicorn cannot send it (502); gunicorn can."""
    got = get(proxy, "/status-299")
    expected = (299, b"hello") if proxy.kind == "gthread" else (502, b"Bad Gateway\n")  # type: ignore[attr-defined]
    assert (got.status, got.body, got.complete) == (*expected, True)


# 3. Chunk-size lines


CHUNK_PATHS = ["/chunk-ext-lf", "/chunk-ext-lf-first-later", "/chunk-ext-lf-later"]


@pytest.mark.parametrize("path", [*CHUNK_PATHS, "/chunk-ext-space", "/chunk-ext-empty"])
def test_chunk_size_line_outside_rfc_9112_is_refused(proxy: Server, path: str) -> None:
    got = get(proxy, path)
    if got.status == 502:
        assert got.complete
    else:
        assert got.status == 200 and not got.complete  # the client connection was closed mid-body
        assert b"world" not in got.body and (path != "/chunk-ext-lf-first-later" or not got.body)


def test_bare_lf_in_a_trailer_closes_the_client(proxy: Server) -> None:
    got = get(proxy, "/trailer-lf")
    assert (got.status, got.body, got.complete) == (200, b"hello", False)
    assert idle(proxy) == 0


@pytest.mark.parametrize(
    "line",
    [b"5;a\nb\r\n", b"5;a b\r\n", b"5;a=\r\n", b"5;=x\r\n", b"5 \r\n", b'5;a="\n"\r\n', b"5;a\x01\r\n"],
)
def test_chunk_size_refuses_what_rfc_9112_does_not_allow(line: bytes) -> None:
    with pytest.raises(FramingError):
        chunk_size(line)


@pytest.mark.parametrize(
    ("line", "size"), [(b"5;a;b=c\r\n", 5), (b'5 ; a = "x \\" y"\r\n', 5), (b"a;x=1;y\r\n", 10)]
)
def test_chunk_size_takes_the_rfc_9112_grammar(line: bytes, size: int) -> None:
    assert chunk_size(line) == size


# 4. response_timeout is a deadline for the whole head


@pytest.mark.parametrize("path", ["/trickle-head", "/processing"])
def test_response_timeout_bounds_the_whole_head(proxy: Server, path: str) -> None:
    got = get(proxy, path)
    assert (got.status, got.complete) == (504, True)
    assert got.seconds < 1.9
