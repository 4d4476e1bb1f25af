"""The reverse proxy against hostile upstreams: heads whose end h11 and a naive reader would put
in different places, statuses a server cannot send, chunk-size lines h11 refuses, heads that
never end. The proxy runs in real ``python -m uvicorn`` (fastbody's h11 and httptools protocols)
and ``python -m gunicorn`` (fastbody's gthread worker) processes in front of a raw-socket
upstream in this process; the client is a raw socket, its bytes parsed by h11."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from fastbody.framing import FramingError, chunk_size

pytest.importorskip("httpx")
pytest.importorskip("h11")
pytest.importorskip("uvicorn")
pytest.importorskip("gunicorn")
pytest.importorskip("starlette")

from hostile import OK, Answer, HostileUpstream, Proxy, get, idle, proxy_fixture

KINDS = ["h11", "httptools", "gthread"]

# Where a head ends (a bare LF in it) is a case of the table in test_faults_upstreams.py.

CANNED: dict[str, bytes] = {
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


def chunk_ext_lf_later(conn: socket.socket, stopping: threading.Event) -> None:
    """The head and a first chunk, then (later) the bad line."""
    conn.sendall(OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    stopping.wait(0.3)
    conn.sendall(b"5;a\nb\r\nworld\r\n0\r\n\r\n")


def chunk_ext_lf_first_later(conn: socket.socket, stopping: threading.Event) -> None:
    """The head, then (later) a bad first line."""
    conn.sendall(OK + b"Transfer-Encoding: chunked\r\n\r\n")
    stopping.wait(0.3)
    conn.sendall(b"5;a\nb\r\nhello\r\n0\r\n\r\n")


def trickle_head(conn: socket.socket, stopping: threading.Event) -> None:
    """One byte each 0.25 s."""
    for byte in OK + b"Content-Length: 5\r\n\r\nhello":
        if stopping.wait(0.25):
            return
        conn.sendall(bytes([byte]))


def processing(conn: socket.socket, stopping: threading.Event) -> None:
    """Sixteen 102 heads, 0.5 s apart, then the answer (a trickle of 1xx heads; a flood of them
    at once is a case of the table in test_faults_upstreams.py)."""
    for _ in range(16):
        conn.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
        if stopping.wait(0.5):
            return
    conn.sendall(OK + b"Content-Length: 5\r\n\r\nhello")


ANSWERS: dict[str, Answer] = {
    **CANNED,
    "/chunk-ext-lf-later": chunk_ext_lf_later,
    "/chunk-ext-lf-first-later": chunk_ext_lf_first_later,
    "/trickle-head": trickle_head,
    "/processing": processing,
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[HostileUpstream]:
    server = HostileUpstream(ANSWERS)
    yield server
    server.close()


proxy = proxy_fixture(KINDS, RAW_UPSTREAM="upstream")


# 1. Statuses


@pytest.mark.parametrize("path", ["/status-999", "/status-600"])
def test_status_outside_100_to_599_is_502(proxy: Proxy, path: str) -> None:
    got = get(proxy, path)
    assert (got.status, got.complete) == (502, True)


def test_status_without_a_phrase(proxy: Proxy) -> None:
    """299 has no phrase in http.HTTPStatus: uvicorn cannot send it (502); gunicorn can."""
    got = get(proxy, "/status-299")
    expected = (299, b"hello") if proxy.kind == "gthread" else (502, b"Bad Gateway\n")
    assert (got.status, got.body, got.complete) == (*expected, True)


# 2. Chunk-size lines


CHUNK_PATHS = ["/chunk-ext-lf", "/chunk-ext-lf-first-later", "/chunk-ext-lf-later"]


@pytest.mark.parametrize("path", [*CHUNK_PATHS, "/chunk-ext-space", "/chunk-ext-empty"])
def test_chunk_size_line_outside_rfc_9112_is_refused(proxy: Proxy, path: str) -> None:
    got = get(proxy, path)
    if got.status == 502:
        assert got.complete
    else:
        assert got.status == 200 and not got.complete  # the client connection was closed mid-body
        assert b"world" not in got.body and (path != "/chunk-ext-lf-first-later" or not got.body)


def test_bare_lf_in_a_trailer_closes_the_client(proxy: Proxy) -> None:
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


# 3. response_timeout is a deadline for the whole head


@pytest.mark.parametrize("path", ["/trickle-head", "/processing"])
def test_response_timeout_bounds_the_whole_head(proxy: Proxy, path: str) -> None:
    got = get(proxy, path)
    assert (got.status, got.complete) == (504, True)
    assert got.seconds < 1.9
