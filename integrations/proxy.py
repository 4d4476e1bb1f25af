"""A reverse-proxy endpoint whose upstream response bodies are spliced socket → pipe → socket.

    from fastbody.integrations.proxy import ReverseProxy, WSGIReverseProxy
    app = Starlette(routes=[Mount("/api", app=ReverseProxy("http://127.0.0.1:9000"))])   # ASGI
    application = WSGIReverseProxy("http://127.0.0.1:9000")                              # WSGI

The upstream is fixed by configuration. Requests go to it over HTTP/1.1 on a bounded pool of
kept-alive connections; the response head is read with ``MSG_PEEK`` and parsed by h11, so every
body byte is still in the upstream socket when the body starts. Under fastbody's uvicorn protocol
the body goes by ``fastbody.response.splicesend`` (Content-Length: one splice of that many bytes;
chunked: each chunk's data spliced, its size line parsed here; close-delimited: splice to the
end); under fastbody's gunicorn workers by ``wsgi.file_wrapper(socket, length=N)``. Under any
other server the same bytes are streamed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, MutableMapping
from contextlib import aclosing, closing
from typing import Any
from urllib.parse import quote

import h11

import fastbody
from fastbody.framing import Delimit, Framing
from fastbody.heads import arun, run

from .asgi import SPLICESEND
from .upstream import (
    AsyncPool,
    BlockingPool,
    Upstream,
    UpstreamError,
    chunk_after,
    forwarded_headers,
    may_retry,
    read_chunk_header,
    read_head,
    read_trailers,
    request_framing,
    strip_hop_by_hop,
    wants_upgrade,
)

__all__ = ["ReverseProxy", "UpstreamError", "WSGIReverseProxy"]

COPY_CHUNK = 64 << 10
"""Bytes read at a time when the body must pass through Python (no zero-copy server)."""

log = logging.getLogger("fastbody.proxy")

Headers = list[tuple[bytes, bytes]]


class _ClientGone(Exception):
    """The client went away before the request body was read."""


class _Settings:
    """What both endpoints are configured with."""

    def __init__(
        self,
        upstream: str,
        *,
        preserve_host: bool = False,
        connect_timeout: float = 5.0,
        response_timeout: float = 60.0,
        max_idle: int = 32,
    ) -> None:
        self.upstream = Upstream.parse(upstream)
        self.preserve_host = preserve_host
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.max_idle = max_idle

    def request_head(
        self,
        conn: h11.Connection,
        method: str,
        target: bytes,
        headers: Headers,
        client: str | None,
        scheme: str,
    ) -> tuple[bytes, Framing]:
        framing = request_framing(headers)
        sent = forwarded_headers(
            headers,
            client=client,
            scheme=scheme,
            upstream=self.upstream,
            preserve_host=self.preserve_host,
            request=framing,
        )
        return conn.send(h11.Request(method=method, target=target, headers=sent)) or b"", framing

    def target(self, path: bytes, query: bytes) -> bytes:
        base = self.upstream.base_path.encode()
        path = path if path.startswith(b"/") else b"/" + path
        return base + path + (b"?" + query if query else b"")


def _reusable(response: h11.Response) -> bool:
    """Whether the upstream lets the connection carry another request after this response."""
    tokens = {
        token.strip().lower()
        for name, value in response.headers.raw_items()
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return b"close" not in tokens and (response.http_version == b"1.1" or b"keep-alive" in tokens)


def _plain(text: str) -> tuple[Headers, bytes]:
    body = (text + "\n").encode()
    return [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))], body


# ASGI


class ReverseProxy(_Settings):
    """An ASGI app that forwards every HTTP request to ``upstream`` (``http://host:port[/base]``).

    ``preserve_host``: send the client's Host header upstream (default: the upstream's own, as
    nginx's ``proxy_pass`` does). ``connect_timeout``: seconds to connect (then 502).
    ``response_timeout``: seconds the upstream may take to send the response head, or to make
    progress on the request body (then 504). ``max_idle``: idle kept-alive connections kept.
    """

    def __init__(self, upstream: str, **options: Any) -> None:
        super().__init__(upstream, **options)
        self.pool = AsyncPool(self.upstream, self.max_idle, self.connect_timeout)

    async def __call__(  # the ASGI 3 signature, as Starlette's and uvicorn's types spell it
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003, "reason": "WebSocket is not proxied"})
        else:
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(
        self, scope: MutableMapping[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        headers: Headers = list(scope["headers"])
        if wants_upgrade(headers):
            await self._error(send, 501, "upgrades (WebSocket) are not proxied")
            return
        target = self.target(_asgi_path(scope), scope.get("query_string", b""))
        client = scope["client"][0] if scope.get("client") else None
        conn = h11.Connection(h11.CLIENT)
        head, framing = self.request_head(conn, scope["method"], target, headers, client, scope["scheme"])
        try:
            sock, response, body = await self._exchange(scope["method"], conn, head, framing, receive)
        except UpstreamError as error:
            log.error("proxy: %s %s: %s", scope["method"], target.decode("latin-1"), error)
            await self._error(send, error.status, str(error))
            return
        except _ClientGone:
            return
        try:
            # A chunked body's first size line, when it is there already, is read before the head
            # goes out: a bad one is still a 502 (after the head, the client could only be told by
            # a closed connection). One not there yet (an event stream) does not hold the head.
            first = await arun(read_chunk_header(sock), self.response_timeout) if _ready(body, sock) else None
        except (UpstreamError, OSError) as error:
            sock.close()
            failure = _upstream_failure(error, self.response_timeout)
            log.error("proxy: %s %s: %s", scope["method"], target.decode("latin-1"), failure)
            await self._error(send, failure.status, str(failure))
            return
        reusable = False
        watch = _DisconnectWatch(receive)
        try:
            start = {"type": "http.response.start", "status": response.status_code}
            await send({**start, "headers": _response_headers(response)})
            reusable = await self._body(sock, body, first, scope, send, watch.gone) and _reusable(response)
        except (UpstreamError, OSError, asyncio.TimeoutError) as error:
            # The head is out: the client can only be told by closing its connection, which the
            # server does for a response left incomplete.
            failure = _upstream_failure(error, self.response_timeout)
            log.error("proxy: %s %s: %s mid-body", scope["method"], target.decode("latin-1"), failure)
        finally:
            watch.close()
            self.pool.release(sock, reusable)

    async def _exchange(
        self, method: str, conn: h11.Connection, head: bytes, framing: Framing, receive: Callable[..., Any]
    ) -> tuple[socket.socket, h11.Response, Framing]:
        """Send the request upstream and read the response head; a kept-alive connection that
        the upstream closed before answering is retried once on a new one (``may_retry``)."""
        for attempt in range(2):
            sock, reused = await self.pool.acquire()
            try:
                await self._request(sock, conn, head, framing, receive)
                response, body = await arun(read_head(sock, conn, method), self.response_timeout)
                return sock, response, body
            except BaseException as error:
                sock.close()
                if attempt == 0 and may_retry(error, method, reused, framing):
                    conn, head = _request_again(head)
                    continue
                if isinstance(error, UpstreamError | OSError | asyncio.TimeoutError):
                    raise _upstream_failure(error, self.response_timeout) from None
                raise
        raise AssertionError("unreachable")

    async def _request(
        self,
        sock: socket.socket,
        conn: h11.Connection,
        head: bytes,
        framing: Framing,
        receive: Callable[..., Any],
    ) -> None:
        # The upstream must take what it is sent within response_timeout; a slow client
        # uploading a big body is not the upstream's delay. The head is framing, the body's
        # bytes are counted as moved.
        writer = fastbody.ResponseWriter(sock, framing, head=head, timeout=self.response_timeout)
        more = framing.delimit is not Delimit.NONE
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            more = bool(message.get("more_body", False))
            if data := message.get("body", b""):
                await writer.asend(data)
        await writer.aend()

    async def _body(
        self,
        sock: socket.socket,
        framing: Framing,
        first_chunk: int | None,
        scope: MutableMapping[str, Any],
        send: Callable[..., Any],
        client_gone: Callable[[], bool],
    ) -> bool:
        """Forward the response body; whether it ended exactly as framed (the connection is clean)."""
        zero_copy = SPLICESEND in scope.get("extensions", {})
        timeout = self.response_timeout
        if framing.delimit is Delimit.NONE:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        if framing.delimit is Delimit.LENGTH:
            return await self._forward(sock, framing.length, zero_copy, send, client_gone, False)
        if framing.delimit is Delimit.CLOSE:
            await self._forward(sock, None, zero_copy, send, client_gone, False)
            return False
        size = first_chunk if first_chunk is not None else await arun(read_chunk_header(sock), timeout)
        while size:
            if not await self._forward(sock, size, zero_copy, send, client_gone, True) or client_gone():
                return False  # the chunk was not all sent: what follows in the socket is not a size line
            size = await arun(chunk_after(sock), timeout)
        await arun(read_trailers(sock), timeout)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _forward(
        self,
        sock: socket.socket,
        count: int | None,
        zero_copy: bool,
        send: Callable[..., Any],
        client_gone: Callable[[], bool],
        more_body: bool,
    ) -> bool:
        """``count`` bytes (None: to the end) of the upstream socket to the client; True only if
        exactly that many left the upstream socket (the connection is clean). The server's
        ``send`` raises when a zero-copy body could not be sent whole (with the bytes it sent):
        an upstream that ended early, a client gone or cut off. Copying, a client gone is seen
        here (a server drops body messages to a closed connection)."""
        if zero_copy:
            try:
                await send({"type": SPLICESEND, "source": sock, "count": count, "more_body": more_body})
            except fastbody.IncompleteTransfer as error:
                log.error("proxy: upstream closed after %d of %s body bytes", error.sent, count)
                return False
            except fastbody.TransferError:
                return False  # the client's side failed: the server has said why
            return True
        chunks = fastbody.achunks(
            fastbody.describe(sock, count=count), size=COPY_CHUNK, timeout=self.response_timeout
        )
        async with aclosing(chunks):
            async for data in chunks:
                if client_gone():
                    return False
                await send({"type": "http.response.body", "body": data, "more_body": True})
        if not more_body:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return not client_gone()

    async def _error(self, send: Callable[..., Any], status: int, text: str) -> None:
        headers, body = _plain(text)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class _DisconnectWatch:
    """Tells whether the client has gone, by waiting on ``receive()`` beside the response (the
    request body is read by then; an empty last request message may still be pending)."""

    def __init__(self, receive: Callable[..., Any]) -> None:
        self.receive = receive
        self.waiting: asyncio.Future[Any] = asyncio.ensure_future(receive())

    def gone(self) -> bool:
        while self.waiting.done():
            if self.waiting.cancelled() or self.waiting.exception() is not None:
                return True
            if self.waiting.result()["type"] == "http.disconnect":
                return True
            self.waiting = asyncio.ensure_future(self.receive())
        return False

    def close(self) -> None:
        self.waiting.cancel()


def _upstream_failure(error: BaseException, timeout: float) -> UpstreamError:
    """What an error talking to the upstream tells the client (502, or 504 for a timeout)."""
    if isinstance(error, UpstreamError):
        return error
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return UpstreamError(f"no response from upstream within {timeout} s", 504)
    return UpstreamError(f"upstream connection failed: {error}")


def _request_again(head: bytes) -> tuple[h11.Connection, bytes]:
    """A new h11 connection and the same request head, for a retry on a new upstream connection."""
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(head)
    event = parser.next_event()
    assert isinstance(event, h11.Request)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method=event.method, target=event.target, headers=list(event.headers.raw_items()))
    return conn, conn.send(request) or b""


# WSGI


StartResponse = Callable[..., Any]


class WSGIReverseProxy(_Settings):
    """The same proxy as a WSGI app (options as ``ReverseProxy``). Under fastbody's gunicorn
    workers every body is spliced (a chunked one chunk by chunk, through ``Pieces``); under
    another WSGI server the bytes are read and iterated."""

    def __init__(self, upstream: str, **options: Any) -> None:
        super().__init__(upstream, **options)
        self.pool = BlockingPool(self.upstream, self.max_idle, self.connect_timeout)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = _wsgi_headers(environ)
        method = environ["REQUEST_METHOD"]
        if wants_upgrade(headers):
            return self._error(start_response, 501, "upgrades (WebSocket) are not proxied")
        target = self.target(_wsgi_path(environ), environ.get("QUERY_STRING", "").encode("latin-1"))
        conn = h11.Connection(h11.CLIENT)
        client = environ.get("REMOTE_ADDR")
        head, framing = self.request_head(conn, method, target, headers, client, environ["wsgi.url_scheme"])
        try:
            sock, response, body = self._exchange(method, conn, head, framing, environ["wsgi.input"])
        except UpstreamError as error:
            log.error("proxy: %s %s: %s", method, target.decode("latin-1"), error)
            return self._error(start_response, error.status, str(error))
        try:
            # As in ReverseProxy: a bad first chunk-size line is a 502, before the head goes out.
            first = run(read_chunk_header(sock), self.response_timeout) if _ready(body, sock) else None
        except (UpstreamError, OSError) as error:
            sock.close()
            failure = _upstream_failure(error, self.response_timeout)
            log.error("proxy: %s %s: %s", method, target.decode("latin-1"), failure)
            return self._error(start_response, failure.status, str(failure))
        status = f"{response.status_code} {response.reason.decode('latin-1') or 'Unknown'}"
        start_response(
            status, [(n.decode("latin-1"), v.decode("latin-1")) for n, v in _response_headers(response)]
        )
        reusable = _reusable(response)
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
        from .gunicorn import Pieces  # loaded already: the wrapper is its FileWrapper

        return wrapper(Pieces(pieces))  # type: ignore[no-any-return]

    def _exchange(
        self, method: str, conn: h11.Connection, head: bytes, framing: Framing, body: Any
    ) -> tuple[socket.socket, h11.Response, Framing]:
        for attempt in range(2):
            sock, reused = self.pool.acquire()
            try:
                timeout = self.response_timeout
                writer = fastbody.ResponseWriter(sock, framing, head=head, timeout=timeout)
                while framing.delimit is not Delimit.NONE and (data := body.read(COPY_CHUNK)):
                    writer.send(data)
                writer.end()
                response, delimited = run(read_head(sock, conn, method), timeout)
                return sock, response, delimited
            except BaseException as error:
                sock.close()
                if attempt == 0 and may_retry(error, method, reused, framing):
                    conn, head = _request_again(head)
                    continue
                if isinstance(error, UpstreamError | OSError | asyncio.TimeoutError):
                    raise _upstream_failure(error, self.response_timeout) from None
                raise
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
            failure = _upstream_failure(error, timeout)
            raise fastbody.IncompleteTransfer.make(None, f"upstream failed mid-body: {failure}", 0) from None
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

    def _error(self, start_response: StartResponse, status: int, text: str) -> list[bytes]:
        headers, body = _plain(text)
        reason = {501: "Not Implemented", 502: "Bad Gateway", 504: "Gateway Timeout"}.get(status, "Error")
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


def _response_headers(response: h11.Response) -> Headers:
    """The upstream's response headers for the client: not the hop-by-hop ones, and not Date
    and Server, which the server in front writes itself (as nginx hides them by default)."""
    kept = strip_hop_by_hop(list(response.headers.raw_items()))
    return [(name, value) for name, value in kept if name.lower() not in (b"date", b"server")]


def _ready(framing: Framing, sock: socket.socket) -> bool:
    """Whether a chunked body's first size line can be read before the head goes out."""
    return framing.delimit is Delimit.CHUNKED and fastbody.readable_now(sock)


def _asgi_path(scope: MutableMapping[str, Any]) -> bytes:
    """The request path below the mount prefix (``root_path``), as the client encoded it when
    the prefix can be matched in the raw path, else re-quoted from the decoded one."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    raw: bytes | None = scope.get("raw_path")
    if raw is not None and raw.startswith(root.encode()):
        return raw[len(root.encode()) :]  # the mount prefix stays on this side
    below = path[len(root) :] if path.startswith(root) else path
    return quote(below).encode()


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
