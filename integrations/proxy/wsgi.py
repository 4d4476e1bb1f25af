"""``WSGIReverseProxy``: the reverse proxy as a WSGI app. Under fastbody's gunicorn workers
every body is spliced: a Content-Length or chunked one as ``Pieces`` (one piece, or a piece per
chunk), a close-delimited one as the socket itself; under another WSGI server the bytes are
read and iterated."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from typing import Any
from urllib.parse import quote

import fastbody
from fastbody.framing import Delimit, Framing
from fastbody.heads import run, run_within

from ..failures import SourceFailed
from .exchange import COPY_CHUNK, Answer, Exchange, Headers, Settings, failure, plain, refused
from .pool import BlockingPool
from .upstream import UpstreamError, chunk_after, read_chunk_header, read_trailers, wants_upgrade

log = logging.getLogger("gunicorn.error")
"""gunicorn's error log: its level, format and file (``--log-level``, ``--error-logfile``)."""

StartResponse = Callable[..., Any]


class WSGIReverseProxy(Settings):
    """The same proxy as a WSGI app (options as ``ReverseProxy``). Under fastbody's gunicorn
    workers every body is spliced (a chunked one chunk by chunk, through ``Pieces``); under
    another WSGI server the bytes are read and iterated. An upstream status outside 100-599 is
    answered 502 (``exchange.sendable``); any other is forwarded with the upstream's phrase."""

    def __init__(self, upstream: str, **options: Any) -> None:
        super().__init__(upstream, **options)
        self.pool = BlockingPool(self.upstream, self.max_idle, self.connect_timeout)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = _wsgi_headers(environ)
        method = environ["REQUEST_METHOD"]
        if wants_upgrade(headers):
            return self._error(start_response, 501, "Not Implemented", "upgrades (WebSocket) are not proxied")
        client = environ.get("REMOTE_ADDR")
        query = environ.get("QUERY_STRING", "").encode("latin-1")
        exchange = self.exchange(
            method, _wsgi_path(environ), query, headers, client, environ["wsgi.url_scheme"]
        )
        try:
            sock, answer = self._exchange(exchange, environ["wsgi.input"])
        except UpstreamError as error:
            return self._error(start_response, *refused(log, self.where(exchange), error))
        response, body, first = answer.response, answer.body, answer.first_chunk
        status = f"{response.status_code} {response.reason.decode('latin-1') or 'Unknown'}"
        try:
            start_response(status, [(n.decode("latin-1"), v.decode("latin-1")) for n, v in answer.headers])
        except BaseException:  # a head the server refuses: the upstream connection goes now, not with the GC
            sock.close()
            raise
        reusable = answer.reusable
        if body.delimit is Delimit.NONE:
            self.pool.release(sock, reusable)
            return []
        wrapper: Any = environ.get("wsgi.file_wrapper")
        # Another server's wrapper would take the socket for a file (gunicorn's would sendfile
        # from it): there the bytes are read and iterated instead.
        zero_copy = getattr(wrapper, "__module__", "").startswith("fastbody.")
        if body.delimit is Delimit.CLOSE:
            source = _UpstreamBody(sock)
            return wrapper(source) if zero_copy else _read_all(source)
        pieces = self._pieces(sock, body, first, reusable)
        if not zero_copy:
            return self._read_pieces(sock, pieces)
        from ..gunicorn import Pieces  # loaded already: the wrapper is its FileWrapper

        return wrapper(Pieces(pieces))  # type: ignore[no-any-return]

    def _exchange(self, exchange: Exchange, body: Any) -> tuple[socket.socket, Answer]:
        """As ``ReverseProxy._exchange``, on this thread."""
        for attempt in range(2):
            sock, reused = self.pool.acquire()
            try:
                chunks = iter(lambda: body.read(COPY_CHUNK), b"")
                timeout = self.response_timeout
                run(exchange.send(sock, chunks, timeout, blocking=True), timeout)
                return sock, run_within(exchange.answer(sock, named_only=False), timeout)
            except BaseException as error:
                sock.close()
                exchange = exchange.after(error, attempt, reused, self.response_timeout)
        raise AssertionError("unreachable")

    def _pieces(
        self, sock: socket.socket, body: Framing, size: int | None, reusable: bool
    ) -> Generator[tuple[socket.socket, int], None, None]:
        """The body as ``(socket, count)`` pieces: a Content-Length body whole, a chunked one
        chunk by chunk (``size``: the first chunk's, if already read). The server asks for the
        next piece only once it sent the one before whole, so the connection goes back to the
        pool only when the last was asked for and the trailers were read: exactly the body's
        bytes left the socket."""
        clean = False
        timeout = self.response_timeout
        try:
            if body.delimit is Delimit.LENGTH:
                if body.length:
                    yield sock, body.length
                clean = True
                return
            if size is None:
                size = run(read_chunk_header(sock), timeout)
            while size:
                yield sock, size
                size = run(chunk_after(sock), timeout)
            run(read_trailers(sock), timeout)
            clean = True
        except (UpstreamError, OSError) as error:
            # The server logs it (one line), with the bytes sent: an upstream failure, named.
            failed = failure(error, timeout)
            raise SourceFailed.of(f"{self.upstream.authority} failed ({failed})", 0, None) from None
        finally:
            self.pool.release(sock, reusable and clean)

    def _read_pieces(
        self, sock: socket.socket, pieces: Generator[tuple[socket.socket, int], None, None]
    ) -> Iterator[bytes]:
        """The same pieces read into Python, for a server without fastbody's wrapper."""
        sock.settimeout(self.response_timeout)  # a stalled upstream raises TimeoutError
        with closing(pieces):
            for _, count in pieces:
                yield from _read_exactly(sock, count)

    def _error(self, start_response: StartResponse, status: int, reason: str, text: str = "") -> list[bytes]:
        headers, body = plain(text or reason)
        start_response(f"{status} {reason}", [(n.decode(), v.decode()) for n, v in headers])
        return [body]


class _UpstreamBody:
    """A close-delimited upstream body as a WSGI body source: fastbody's wrapper splices from
    ``fileno()``; any other server's wrapper calls ``read``. The connection ends with it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, size: int = COPY_CHUNK) -> bytes:
        return fastbody.read_some(self.sock, size)

    def close(self) -> None:
        self.sock.close()


def _read_exactly(sock: socket.socket, size: int) -> Iterator[bytes]:
    while size > 0:
        data = fastbody.read_some(sock, min(size, COPY_CHUNK))
        if not data:
            raise UpstreamError(f"upstream closed inside the body ({size} bytes missing)")
        size -= len(data)
        yield data


def _read_all(source: _UpstreamBody) -> Iterator[bytes]:
    source.sock.settimeout(None)
    try:
        while data := source.read():
            yield data
    finally:
        source.close()


def _wsgi_headers(environ: dict[str, Any]) -> Headers:
    headers: Headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append(
                (key[5:].replace("_", "-").lower().encode("latin-1"), str(value).encode("latin-1"))
            )
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.append((key.replace("_", "-").lower().encode("latin-1"), str(value).encode("latin-1")))
    return headers


def _wsgi_path(environ: dict[str, Any]) -> bytes:
    """The request path below SCRIPT_NAME, as the client encoded it when the server says
    (gunicorn's RAW_URI), else re-quoted from PATH_INFO."""
    script: str = environ.get("SCRIPT_NAME", "")
    raw: str = environ.get("RAW_URI", "").split("?", 1)[0]
    if raw.startswith(script + "/") or (raw and not script):
        return raw[len(script) :].encode("latin-1")
    return quote(environ.get("PATH_INFO", "").encode("latin-1")).encode()
