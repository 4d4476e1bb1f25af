"""The apps the metrics tests serve, each installing fastbody's Prometheus counters at import
(so in every worker): ``wsgi`` for gunicorn, ``asgi`` (Starlette) for uvicorn.

- ``/file?path=``: the file, by ``wsgi.file_wrapper`` / ``FileResponse`` (pathsend), with the
  serving worker's pid in ``X-Pid``;
- ``/metrics``: ``generate_latest`` of the metrics registry (every worker's in multiprocess mode);
- ``/stats``: the pid and ``fastbody.stats()``, which the test servers wait for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

import fastbody
from fastbody.integrations import metrics

metrics.install()

StartResponse = Callable[..., Any]


def wsgi(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    route = environ["PATH_INFO"]
    query = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if route == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("X-Pid", str(os.getpid()))])
        return environ["wsgi.file_wrapper"](open(query["path"], "rb"))  # type: ignore[no-any-return]
    if route == "/metrics":
        body = generate_latest(metrics.registry())
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]
    body = json.dumps({"pid": os.getpid(), "stats": dict(fastbody.stats())}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


async def file(request: Request) -> Response:
    return FileResponse(request.query_params["path"], headers={"X-Pid": str(os.getpid())})


async def scrape(request: Request) -> Response:
    return Response(generate_latest(metrics.registry()), media_type=CONTENT_TYPE_LATEST)


async def stats(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid(), "stats": dict(fastbody.stats())})


asgi = Starlette(routes=[Route("/file", file), Route("/metrics", scrape), Route("/stats", stats)])
