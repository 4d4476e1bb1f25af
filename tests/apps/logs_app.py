"""The ASGI app of ``test_logs.py``, for ``python -m uvicorn logs_app:app --http
fastbody.integrations.uvicorn:...``.

``/file?path=P``: Starlette's ``FileResponse`` (``pathsend``: sendfile). ``/plain``: a 5-byte
``Response`` (uvicorn writes it). ``/shrinks?path=P``: a ``FileResponse`` whose file is cut to
1000 bytes once its head (with the whole length) went out: a source that ends short, which
Starlette lets out of the app. ``/raw/...`` → ``$RAW_UPSTREAM`` and ``/dead/...`` →
``$DEAD_UPSTREAM`` (a closed port): fastbody's ``ReverseProxy``; ``/slow/...`` → ``$RAW_UPSTREAM``
with a 1 s response timeout. ``/stats``: ``fastbody.stats()``.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

import fastbody
from fastbody.integrations.proxy import ReverseProxy


async def stats(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid(), "stats": dict(fastbody.stats())})


async def file(request: Request) -> Response:
    return FileResponse(request.query_params["path"])


async def plain(request: Request) -> Response:
    return Response(b"hello")


async def shrinks(scope: Scope, receive: Receive, send: Send) -> None:
    path = Request(scope).query_params["path"]

    async def cut_after_head(message: Any) -> None:
        await send(message)
        if message["type"] == "http.response.start":
            os.truncate(path, 1000)

    await FileResponse(path)(scope, receive, cut_after_head)


RAW = os.environ.get("RAW_UPSTREAM", "http://127.0.0.1:9")
DEAD = os.environ.get("DEAD_UPSTREAM", "http://127.0.0.1:9")

app = Starlette(
    routes=[
        Route("/stats", stats),
        Route("/file", file),
        Route("/plain", plain),
        Mount("/shrinks", app=shrinks),
        Mount("/raw", app=ReverseProxy(RAW)),
        Mount("/slow", app=ReverseProxy(RAW, response_timeout=1.0)),
        Mount("/dead", app=ReverseProxy(DEAD, connect_timeout=2.0)),
    ]
)
