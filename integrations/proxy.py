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
from contextlib import closing
from typing import Any
from urllib.parse import quote

import h11

import fastbody

from .asgi import SPLICESEND
from .upstream import (
    AsyncPool,
    BlockingPool,
    BodyKind,
    Framing,
    Upstream,
    UpstreamError,
    bytes_consumed,
    forwarded_headers,
    may_retry,
    read_chunk_end,
    read_chunk_header,
    read_head,
    read_trailers,
    readable_now,
    request_framing,
    response_framing,
    run_async,
    run_blocking,
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
            framing=framing,
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
            sock, response = await self._exchange(scope["method"], conn, head, framing, receive)
        except UpstreamError as error:
            log.error("proxy: %s %s: %s", scope["method"], target.decode("latin-1"), error)
            await self._error(send, error.status, str(error))
            return
        except _ClientGone:
            return
        try:
            body = response_framing(scope["method"], response.status_code, list(response.headers.raw_items()))
            # A chunked body's first size line, when it is there already, is read before the head
            # goes out: a bad one is still a 502 (after the head, the client could only be told by
            # a closed connection). One not there yet (an event stream) does not hold the head.
            first = (
                await run_async(read_chunk_header(), sock, self.response_timeout)
                if _ready(body, sock)
                else None
            )
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
    ) -> tuple[socket.socket, h11.Response]:
        """Send the request upstream and read the response head; a kept-alive connection that
        the upstream closed before answering is retried once on a new one (``may_retry``)."""
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            sock, reused = await self.pool.acquire()
            try:
                await self._request(loop, sock, conn, head, framing, receive)
                response = await run_async(read_head(conn), sock, self.response_timeout)
                return sock, response
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
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        conn: h11.Connection,
        head: bytes,
        framing: Framing,
        receive: Callable[..., Any],
    ) -> None:
        async def write(data: bytes) -> None:
            # The upstream must accept what it is sent within response_timeout; a slow client
            # uploading a big body is not the upstream's delay.
            if data:
                await asyncio.wait_for(loop.sock_sendall(sock, data), self.response_timeout)

        await write(head)
        more = framing.kind is not BodyKind.NONE
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            more = bool(message.get("more_body", False))
            if data := message.get("body", b""):
                await write(conn.send(h11.Data(data=data)) or b"")
        await write(conn.send(h11.EndOfMessage()) or b"")

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
        if framing.kind is BodyKind.NONE:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        if framing.kind is BodyKind.LENGTH:
            return await self._forward_exactly(sock, framing.length, zero_copy, send, client_gone, False)
        if framing.kind is BodyKind.CLOSE:
            await self._forward(sock, None, zero_copy, send, client_gone, False)
            return False
        size = first_chunk if first_chunk is not None else await run_async(read_chunk_header(), sock, timeout)
        while size:
            if (
                not await self._forward_exactly(sock, size, zero_copy, send, client_gone, True)
                or client_gone()
            ):
                return False  # the chunk was not all sent: what follows in the socket is not a size line
            await run_async(read_chunk_end(), sock, timeout)
            size = await run_async(read_chunk_header(), sock, timeout)
        await run_async(read_trailers(), sock, timeout)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _forward_exactly(
        self,
        sock: socket.socket,
        count: int,
        zero_copy: bool,
        send: Callable[..., Any],
        client_gone: Callable[[], bool],
        more_body: bool,
    ) -> bool:
        """``_forward`` of ``count`` bytes, True only if exactly that many left the upstream
        socket. A server drops a zero-copy message once the client has gone (``send`` returns
        as if it had sent): the bytes then still wait in the socket (or are on their way), and
        the connection must be closed, not pooled, nor its next bytes read as a chunk size."""
        before = bytes_consumed(sock)
        if not await self._forward(sock, count, zero_copy, send, client_gone, more_body):
            return False
        after = bytes_consumed(sock)
        return before is not None and after is not None and after - before == count

    async def _forward(
        self,
        sock: socket.socket,
        count: int | None,
        zero_copy: bool,
        send: Callable[..., Any],
        client_gone: Callable[[], bool],
        more_body: bool,
    ) -> bool:
        """``count`` bytes (None: to the end) of the upstream socket to the client; False when
        the upstream ended early (the server has closed the client's connection) or, copying,
        when the client went away (a server drops body messages to a closed connection)."""
        if zero_copy:
            try:
                await send({"type": SPLICESEND, "source": sock, "count": count, "more_body": more_body})
            except fastbody.IncompleteTransfer as error:
                log.error("proxy: upstream closed after %d of %s body bytes", error.sent, count)
                return False
            return True
        loop = asyncio.get_running_loop()
        left = count
        while left is None or left > 0:
            if client_gone():
                return False
            data = await asyncio.wait_for(
                loop.sock_recv(sock, COPY_CHUNK if left is None else min(left, COPY_CHUNK)),
                self.response_timeout,
            )
            if not data:
                if left is None:
                    break
                raise UpstreamError(f"upstream closed with {left} of {count} body bytes unsent")
            await send({"type": "http.response.body", "body": data, "more_body": True})
            left = None if left is None else left - len(data)
        if not more_body:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

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
            sock, response = self._exchange(method, conn, head, framing, environ["wsgi.input"])
        except UpstreamError as error:
            log.error("proxy: %s %s: %s", method, target.decode("latin-1"), error)
            return self._error(start_response, error.status, str(error))
        try:
            body = response_framing(method, response.status_code, list(response.headers.raw_items()))
            # As in ReverseProxy: a bad first chunk-size line is a 502, before the head goes out.
            first = (
                run_blocking(read_chunk_header(), sock, self.response_timeout) if _ready(body, sock) else None
            )
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
        if body.kind is BodyKind.NONE:
            self.pool.release(sock, reusable)
            return []
        wrapper: Any = environ.get("wsgi.file_wrapper")
        # Another server's wrapper would take the socket for a file (gunicorn's would sendfile
        # from it): there the bytes are read and iterated instead.
        zero_copy = getattr(wrapper, "__module__", "").startswith("fastbody.")
        if body.kind is BodyKind.CHUNKED:
            if not zero_copy:
                return self._chunks(sock, first, reusable)
            from .gunicorn import Pieces  # loaded already: the wrapper is its FileWrapper

            return wrapper(Pieces(self._pieces(sock, first, reusable)))  # type: ignore[no-any-return]
        source = _UpstreamBody(
            sock, self.pool, body.length if body.kind is BodyKind.LENGTH else None, reusable
        )
        if not zero_copy:
            sock.settimeout(self.response_timeout)  # a stalled upstream raises TimeoutError
            return _read_all(source)
        return wrapper(source, length=source.left)  # type: ignore[no-any-return]

    def _exchange(
        self, method: str, conn: h11.Connection, head: bytes, framing: Framing, body: Any
    ) -> tuple[socket.socket, h11.Response]:
        for attempt in range(2):
            sock, reused = self.pool.acquire()
            try:
                sock.settimeout(self.response_timeout)
                sock.sendall(head)
                while framing.kind is not BodyKind.NONE and (data := body.read(COPY_CHUNK)):
                    sock.sendall(conn.send(h11.Data(data=data)) or b"")
                sock.sendall(conn.send(h11.EndOfMessage()) or b"")
                sock.settimeout(None)
                return sock, run_blocking(read_head(conn), sock, self.response_timeout)
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
        self, sock: socket.socket, size: int | None, reusable: bool
    ) -> Generator[tuple[socket.socket, int], None, None]:
        """A chunked body as ``(socket, chunk size)`` pieces, each to be moved whole before the
        next is asked for (``size``: the first chunk's, if already read). The connection goes
        back to the pool only after the last chunk and the trailers were read."""
        clean = False
        try:
            if size is None:
                size = run_blocking(read_chunk_header(), sock, self.response_timeout)
            while size:
                yield sock, size
                run_blocking(read_chunk_end(), sock, self.response_timeout)
                size = run_blocking(read_chunk_header(), sock, self.response_timeout)
            run_blocking(read_trailers(), sock, self.response_timeout)
            clean = True
        except (UpstreamError, OSError) as error:
            failure = _upstream_failure(error, self.response_timeout)
            raise fastbody.IncompleteTransfer.make(None, f"upstream failed mid-body: {failure}", 0) from None
        finally:
            self.pool.release(sock, reusable and clean)

    def _chunks(self, sock: socket.socket, size: int | None, reusable: bool) -> Iterator[bytes]:
        """The same pieces read into Python, for a server without fastbody's wrapper."""
        sock.settimeout(self.response_timeout)  # a stalled upstream raises TimeoutError
        pieces = self._pieces(sock, size, reusable)
        with closing(pieces):
            for _, count in pieces:
                yield from _read_exactly(sock, count)

    def _error(self, start_response: StartResponse, status: int, text: str) -> list[bytes]:
        headers, body = _plain(text)
        reason = {501: "Not Implemented", 502: "Bad Gateway", 504: "Gateway Timeout"}.get(status, "Error")
        start_response(f"{status} {reason}", [(n.decode(), v.decode()) for n, v in headers])
        return [body]


class _UpstreamBody:
    """An upstream socket as a WSGI body source: fastbody's wrapper splices from ``fileno()``;
    any other server's wrapper calls ``read``. ``close`` hands the connection back to the pool
    when the body was read exactly (nothing unread, not closed)."""

    def __init__(self, sock: socket.socket, pool: BlockingPool, length: int | None, reusable: bool) -> None:
        self.sock, self.pool, self.left, self.reusable = sock, pool, length, reusable
        self.read_count = 0
        self.start = bytes_consumed(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, size: int = COPY_CHUNK) -> bytes:
        want = size if self.left is None else min(size, self.left - self.read_count)
        data = self.sock.recv(want) if want > 0 else b""
        self.read_count += len(data)
        return data

    def close(self) -> None:
        """Back to the pool only if exactly the body's bytes left the socket: a client that went
        away mid-body (the server stops splicing) leaves the rest unread or still arriving."""
        if self.sock.fileno() >= 0:
            now = bytes_consumed(self.sock)
            exact = self.start is not None and now is not None and now - self.start == self.left
            self.pool.release(self.sock, self.reusable and self.left is not None and exact)


def _read_exactly(sock: socket.socket, size: int) -> Iterator[bytes]:
    while size > 0:
        data = sock.recv(min(size, COPY_CHUNK))
        if not data:
            raise UpstreamError(f"upstream closed inside a chunk ({size} bytes missing)")
        size -= len(data)
        yield data


def _read_all(source: _UpstreamBody) -> Iterator[bytes]:
    try:
        while data := source.read():
            yield data
        if source.left is not None and source.read_count < source.left:
            # Raising makes the server close the connection instead of passing off a short body.
            raise UpstreamError(f"upstream closed after {source.read_count} of {source.left} body bytes")
    finally:
        source.close()


def _response_headers(response: h11.Response) -> Headers:
    """The upstream's response headers for the client: not the hop-by-hop ones, and not Date
    and Server, which the server in front writes itself (as nginx hides them by default)."""
    kept = strip_hop_by_hop(list(response.headers.raw_items()))
    return [(name, value) for name, value in kept if name.lower() not in (b"date", b"server")]


def _ready(framing: Framing, sock: socket.socket) -> bool:
    """Whether a chunked body's first size line can be read before the head goes out."""
    return framing.chunked and readable_now(sock)


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
