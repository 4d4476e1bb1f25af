"""The ASGI reverse proxy in front of the hostile-upstream tests (``test_proxy_hostile.py``), for
``python -m uvicorn hostile_proxy_app:app --http fastbody.integrations.uvicorn:...``.

``/raw`` → ``$RAW_UPSTREAM`` with a 1 s response timeout; ``/stats``: pid, idle upstream
connections, ``fastbody.stats()``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import fastbody
from fastbody.integrations.proxy import ReverseProxy

PROXY = ReverseProxy(os.environ["RAW_UPSTREAM"], response_timeout=1.0)


async def stats(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid(), "idle": len(PROXY.pool._idle), "stats": dict(fastbody.stats())})


app = Starlette(routes=[Route("/stats", stats), Mount("/raw", app=PROXY)])
