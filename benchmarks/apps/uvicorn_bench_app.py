"""The Starlette app benchmarks/uvicorn.py serves, the same under stock uvicorn and fastbody's protocol.

- ``/tiny``: 2 bytes (the latency probe, the readiness check);
- ``/file?path=P``: ``FileResponse(P)``, unmodified app code: under fastbody's protocol the scope
  advertises ``http.response.pathsend`` and Starlette sends that instead of 64 KiB chunks;
- ``/socket?port=N&size=S&zc=1``: the bytes a feeder process on ``127.0.0.1:N`` writes, with
  Content-Length ``S``. ``zc=1``: ``ZeroCopyResponse(sock, count=S)`` (which sends
  ``fastbody.response.splicesend``); without it a ``StreamingResponse`` of 64 KiB
  ``loop.sock_recv`` chunks, the way a stock Starlette app relays a socket;
- ``/via``: how ``zc=1`` sends (``ZeroCopyResponse``, or the raw ASGI messages when
  ``fastbody.integrations.starlette`` cannot be imported);
- ``/zc?path=P``: ``ZeroCopyResponse(P)``, the response ``FileResponse`` is measured against;
- ``/static/NAME`` and ``/starlette-static/NAME``: fastbody's and Starlette's ``StaticFiles`` over
  ``$FASTBODY_BENCH_STATIC`` (their defaults; unset: nothing is mounted).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles as StarletteStaticFiles

try:
    from fastbody.integrations.starlette import StaticFiles, ZeroCopyResponse
except ImportError:  # not there yet: send what it would send (see SpliceSend)
    StaticFiles, ZeroCopyResponse = None, None  # type: ignore[assignment,misc]

CHUNK = 64 << 10
MEDIA = "application/octet-stream"
SPLICESEND = "fastbody.response.splicesend"


class SpliceSend:
    """The messages ``ZeroCopyResponse(sock, count=size)`` sends under fastbody's protocol."""

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.sock, self.size = sock, size

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", MEDIA.encode()), (b"content-length", b"%d" % self.size)]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": SPLICESEND, "source": self.sock, "count": self.size, "more_body": False})
        finally:
            self.sock.close()


async def _recv_chunks(sock: socket.socket) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        while data := await loop.sock_recv(sock, CHUNK):
            yield data
    finally:
        sock.close()


async def tiny(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def file(request: Request) -> FileResponse:
    return FileResponse(request.query_params["path"], media_type=MEDIA)


async def from_socket(request: Request) -> Any:
    size = int(request.query_params["size"])
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(request.query_params["port"]))),
            30,
        )
    except BaseException:
        sock.close()
        raise
    if not request.query_params.get("zc"):
        headers = {"content-length": str(size)}
        return StreamingResponse(_recv_chunks(sock), headers=headers, media_type=MEDIA)
    if ZeroCopyResponse is None:
        return SpliceSend(sock, size)
    return ZeroCopyResponse(sock, count=size, media_type=MEDIA)


async def zero_copy(request: Request) -> Any:
    if ZeroCopyResponse is None:
        return PlainTextResponse("no ZeroCopyResponse here", status_code=501)
    return ZeroCopyResponse(request.query_params["path"], media_type=MEDIA)


def static_mounts(directory: str | None) -> list[BaseRoute]:
    """Both StaticFiles over ``directory``, with their defaults (fastbody's: br/gz siblings,
    Cache-Control), as an app mounts them."""
    if not directory:
        return []
    mounts: list[BaseRoute] = [Mount("/starlette-static", StarletteStaticFiles(directory=directory))]
    if StaticFiles is not None:
        mounts.append(Mount("/static", StaticFiles(directory=directory)))
    return mounts


async def via(request: Request) -> PlainTextResponse:
    return PlainTextResponse("raw ASGI splicesend" if ZeroCopyResponse is None else "ZeroCopyResponse")


app = Starlette(
    routes=[
        Route("/tiny", tiny),
        Route("/file", file),
        Route("/socket", from_socket),
        Route("/via", via),
        Route("/zc", zero_copy),
        *static_mounts(os.environ.get("FASTBODY_BENCH_STATIC")),
    ]
)
