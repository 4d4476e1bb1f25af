"""``ReverseProxy``: the reverse proxy as an ASGI app. Under fastbody's uvicorn protocol each
body goes by ``fastbody.response.splicesend`` (Content-Length: one splice of that many bytes;
chunked: each chunk's data spliced, its size line parsed here; close-delimited: to the end);
under any other server the same bytes are streamed through Python."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

import fastbody
from fastbody.framing import Delimit
from fastbody.heads import arun, arun_within

from ..asgi import SPLICESEND
from .exchange import COPY_CHUNK, Answer, Exchange, Headers, Settings, failure, plain, refused
from .pool import AsyncPool
from .upstream import UpstreamError, chunk_after, read_chunk_header, read_trailers, wants_upgrade

log = logging.getLogger("uvicorn.error")
"""uvicorn's error log (under gunicorn's uvicorn worker, gunicorn's): its level, format, stream."""


class _ClientGone(Exception):
    """The client went away before the request body was read."""


async def _request_body(receive: Callable[..., Any]) -> AsyncIterator[bytes]:
    """The client's request body, as the server hands it over."""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        more = bool(message.get("more_body", False))
        if data := message.get("body", b""):
            yield data


class ReverseProxy(Settings):
    """An ASGI app that forwards every HTTP request to ``upstream`` (``http://host:port[/base]``).

    ``preserve_host``: send the client's Host header upstream (default: the upstream's own, as
    nginx's ``proxy_pass`` does). ``connect_timeout``: seconds to connect (then 502).
    ``response_timeout``: seconds the upstream may take to send the whole response head, 1xx
    heads included (a deadline, not an idle timeout), or to make progress on the request body
    (then 504). ``max_idle``: idle kept-alive connections kept.

    An upstream status outside 100-599, or without a phrase in ``http.HTTPStatus`` (one an ASGI
    server cannot send), is answered 502 (``exchange.sendable``).
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
        client = scope["client"][0] if scope.get("client") else None
        query = scope.get("query_string", b"")
        exchange = self.exchange(scope["method"], _asgi_path(scope), query, headers, client, scope["scheme"])
        where = self.where(exchange)
        try:
            sock, answer = await self._exchange(exchange, receive)
        except UpstreamError as error:
            await self._error(send, *refused(log, where, error))
            return
        except _ClientGone:
            return
        reusable = False
        watch = _DisconnectWatch(receive)
        try:
            start = {"type": "http.response.start", "status": answer.response.status_code}
            await send({**start, "headers": answer.headers})
            reusable = await self._body(sock, answer, scope, send, watch.gone) and answer.reusable
        except (UpstreamError, OSError, asyncio.TimeoutError) as error:
            # The head is out: the client can only be told by closing its connection, which the
            # server does for a response left incomplete.
            log.error(
                "proxy: %s: %s mid-body: client connection closed",
                where,
                failure(error, self.response_timeout),
            )
        finally:
            watch.close()
            self.pool.release(sock, reusable)

    async def _exchange(
        self, exchange: Exchange, receive: Callable[..., Any]
    ) -> tuple[socket.socket, Answer]:
        """Send the request upstream and read the answer's head; a kept-alive connection that
        the upstream closed before answering is retried once on a new one (``may_retry``)."""
        for attempt in range(2):
            sock, reused = await self.pool.acquire()
            try:
                timeout = self.response_timeout
                await arun(exchange.send(sock, _request_body(receive), timeout, blocking=False), timeout)
                return sock, await arun_within(exchange.answer(sock, named_only=True), timeout)
            except BaseException as error:
                sock.close()
                exchange = exchange.after(error, attempt, reused, self.response_timeout)
        raise AssertionError("unreachable")

    async def _body(
        self,
        sock: socket.socket,
        answer: Answer,
        scope: MutableMapping[str, Any],
        send: Callable[..., Any],
        client_gone: Callable[[], bool],
    ) -> bool:
        """Forward the response body; whether it ended exactly as framed (the connection is clean)."""
        framing, first_chunk = answer.body, answer.first_chunk
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
        here (a server drops body messages to a closed connection). The server has logged a
        zero-copy body it could not send whole, naming the side that failed (an upstream that
        closed or reset, a client gone or cut off): nothing more to say here."""
        if zero_copy:
            try:
                await send({"type": SPLICESEND, "source": sock, "count": count, "more_body": more_body})
            except fastbody.TransferError:
                return False
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
        headers, body = plain(text)
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
