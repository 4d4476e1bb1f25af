"""The ASGI reverse proxy under test, for ``python -m uvicorn proxy_app:app --http
fastbody.integrations.uvicorn:...``.

``/api`` → ``$UPSTREAM`` (response timeout ``$PROXY_TIMEOUT``), ``/short`` → ``$UPSTREAM`` with a
1 s response timeout, ``/raw`` → ``$RAW_UPSTREAM`` (the tests' raw-socket upstream), ``/dead`` →
``$DEAD_UPSTREAM`` (a closed port). ``/stats``: pid, open fds, idle upstream connections and
idle pooled pipes (fds a test must not count as leaks), and ``fastbody.stats()``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import fastbody
import fastbody.pipes
from fastbody.integrations.proxy import ReverseProxy

TIMEOUT = float(os.environ.get("PROXY_TIMEOUT", "10"))
PROXIES = {
    "api": ReverseProxy(os.environ["UPSTREAM"], response_timeout=TIMEOUT),
    "short": ReverseProxy(os.environ["UPSTREAM"], response_timeout=1.0),
    "raw": ReverseProxy(os.environ.get("RAW_UPSTREAM", os.environ["UPSTREAM"]), response_timeout=TIMEOUT),
    "dead": ReverseProxy(os.environ.get("DEAD_UPSTREAM", "http://127.0.0.1:9"), connect_timeout=2.0),
}


async def stats(request: Request) -> Response:
    return JSONResponse(
        {
            "pid": os.getpid(),
            "fds": len(os.listdir("/proc/self/fd")),
            "idle": {name: len(proxy.pool._idle) for name, proxy in PROXIES.items()},
            "pipes": fastbody.pipes.default_pool.idle(),
            "stats": dict(fastbody.stats()),
        }
    )


app = Starlette(
    routes=[Route("/stats", stats), *(Mount(f"/{name}", app=proxy) for name, proxy in PROXIES.items())]
)
