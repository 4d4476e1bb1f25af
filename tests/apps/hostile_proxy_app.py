"""The ASGI reverse proxy in front of the hostile-upstream tests (``test_proxy_hostile.py``,
``test_faults_upstreams.py``), for ``python -m uvicorn hostile_proxy_app:app --http
fastbody.integrations.uvicorn:...``.

``/raw`` → ``$RAW_UPSTREAM`` with a 1 s response timeout; ``/rec`` → ``$RECORD_UPSTREAM`` (when
set: the request-recording upstream of the smuggling tests); ``/stats``: pid, idle upstream
connections (``idle``: ``/raw``'s, ``idle_rec``: ``/rec``'s), ``fastbody.stats()``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

import fastbody
from fastbody.integrations.proxy import ReverseProxy

PROXY = ReverseProxy(os.environ["RAW_UPSTREAM"], response_timeout=1.0)
RECORD = (
    ReverseProxy(os.environ["RECORD_UPSTREAM"], response_timeout=1.0)
    if "RECORD_UPSTREAM" in os.environ
    else None
)


async def stats(request: Request) -> Response:
    info = {"pid": os.getpid(), "idle": len(PROXY.pool._idle), "stats": dict(fastbody.stats())}
    info["idle_rec"] = len(RECORD.pool._idle) if RECORD else 0
    return JSONResponse(info)


routes: list[BaseRoute] = [Route("/stats", stats), Mount("/raw", app=PROXY)]
if RECORD is not None:
    routes.append(Mount("/rec", app=RECORD))
app = Starlette(routes=routes)
