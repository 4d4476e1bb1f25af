"""A reverse proxy in front of another HTTP service: its response bodies are spliced.

    pip install 'fastbody[uvicorn]'
    python -m http.server 9000 --bind 127.0.0.1 &            # any upstream
    UPSTREAM=http://127.0.0.1:9000 uvicorn --app-dir examples proxy_app:app \
        --http fastbody.integrations.uvicorn:AutoProtocol
    curl http://127.0.0.1:8000/api/                           # the upstream's /
    curl http://127.0.0.1:8000/stats

The same with gunicorn: ``WSGIReverseProxy`` under ``-k egg:fastbody#gthread`` (see README).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import fastbody
from fastbody.integrations.proxy import ReverseProxy


async def stats(request: Request) -> Response:
    return JSONResponse(fastbody.stats())


app = Starlette(
    routes=[
        Route("/stats", stats),
        Mount("/api", app=ReverseProxy(os.environ.get("UPSTREAM", "http://127.0.0.1:9000"))),
    ]
)
