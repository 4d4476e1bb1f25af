"""The real upstream the proxy tests forward to, run by stock ``python -m uvicorn`` (h11).

``/file?path=`` (Content-Length), ``/chunked?path=`` (chunked, 256 KiB pieces), ``/echo`` (any
method: sha256 and length of the request body, headers, path and query as received), ``/status?code=``,
``/conns`` (distinct client connections seen: proves the proxy's pool reuses them), ``/slow?delay=``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PIECE = 256 << 10
CONNECTIONS: set[tuple[str, int]] = set()
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def seen(request: Request) -> None:
    if request.client is not None:
        CONNECTIONS.add((request.client.host, request.client.port))


async def file(request: Request) -> Response:
    seen(request)
    return FileResponse(request.query_params["path"], headers={"x-upstream": "file"})


async def chunked(request: Request) -> Response:
    seen(request)
    path = request.query_params["path"]

    async def pieces() -> AsyncIterator[bytes]:
        with open(path, "rb") as body:
            while data := body.read(PIECE):
                yield data

    return StreamingResponse(pieces(), media_type="application/octet-stream")


async def echo(request: Request) -> Response:
    seen(request)
    digest, size = hashlib.sha256(), 0
    async for data in request.stream():
        digest.update(data)
        size += len(data)
    return JSONResponse(
        {
            "method": request.method,
            "sha256": digest.hexdigest(),
            "length": size,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.scope["headers"]],
            "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
            "path": request.scope["path"],
            "query": request.scope["query_string"].decode("latin-1"),
        },
        headers={"x-upstream": "echo"},
    )


async def status(request: Request) -> Response:
    seen(request)
    return Response(status_code=int(request.query_params["code"]), headers={"etag": '"v1"'})


async def conns(request: Request) -> Response:
    seen(request)
    return JSONResponse({"connections": len(CONNECTIONS)})


async def stats(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid(), "stats": {}})


async def slow(request: Request) -> Response:
    seen(request)
    await asyncio.sleep(float(request.query_params.get("delay", "3")))
    return Response(b"late\n")


app = Starlette(
    routes=[
        Route("/file", file, methods=["GET", "HEAD"]),
        Route("/chunked", chunked),
        Route("/echo", echo, methods=METHODS),
        Route("/echo/{rest:path}", echo, methods=METHODS),
        Route("/status", status),
        Route("/conns", conns),
        Route("/slow", slow),
        Route("/stats", stats),
    ]
)
