"""fastbody's reverse proxies as benchmarks/proxy.py runs them, in front of ``$UPSTREAM``.

    python -m uvicorn proxy_bench_fastbody:app --http fastbody.integrations.uvicorn:HttpToolsProtocol
    python -m gunicorn -k egg:fastbody#gthread --threads 8 proxy_bench_fastbody:application

Every path is forwarded as it is, except ``/__stats``, answered here without touching the
upstream: this process's ``fastbody.stats()`` as JSON (which path moved the body bytes), and
``upstream_connections``, how many upstream connections this process has opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import fastbody
from fastbody.integrations.proxy import ReverseProxy, WSGIReverseProxy

UPSTREAM = os.environ["UPSTREAM"]
STATS = "/__stats"


def _stats() -> bytes:
    made = _proxy.pool.connections_made + _wsgi_proxy.pool.connections_made
    return json.dumps({"pid": os.getpid(), "upstream_connections": made, **fastbody.stats()}).encode()


_proxy = ReverseProxy(UPSTREAM)


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "http" and scope["path"] == STATS:
        body = _stats()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await _proxy(scope, receive, send)


_wsgi_proxy = WSGIReverseProxy(UPSTREAM)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == STATS:
        body = _stats()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    return _wsgi_proxy(environ, start_response)
