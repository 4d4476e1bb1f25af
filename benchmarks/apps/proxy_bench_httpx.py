"""The usual Python streaming reverse proxy, for benchmarks/proxy.py: Starlette + httpx.

    UPSTREAM=http://127.0.0.1:9000 python -m uvicorn proxy_bench_httpx:app --http httptools

Every request is sent to ``$UPSTREAM`` by one shared ``httpx.AsyncClient`` (kept-alive
connections, as many idle ones kept as fastbody's proxy keeps: 32) with ``stream=True`` (what
``client.stream`` does inside), and the response goes back as a ``StreamingResponse`` over
``aiter_raw()`` (the bytes as they arrive, no decoding), its headers, Content-Length included,
forwarded without the hop-by-hop ones; the upstream response is closed when the body is out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
}

client = httpx.AsyncClient(
    base_url=os.environ["UPSTREAM"],
    timeout=60.0,
    limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
)


async def proxy(request: Request) -> StreamingResponse:
    headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in HOP_BY_HOP]
    upstream_request = client.build_request(
        request.method,
        httpx.URL(path=request.url.path, query=request.url.query.encode("latin-1")),
        headers=headers,
        content=request.stream() if request.method not in ("GET", "HEAD") else None,
    )
    response = await client.send(upstream_request, stream=True)
    forwarded = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in response.headers.multi_items()
        if k.lower() not in HOP_BY_HOP
    ]
    streaming = StreamingResponse(
        response.aiter_raw(), status_code=response.status_code, background=BackgroundTask(response.aclose)
    )
    streaming.raw_headers = forwarded  # as the upstream sent them, Content-Length included
    return streaming


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await client.aclose()


app = Starlette(
    routes=[Route("/{path:path}", proxy, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])],
    lifespan=lifespan,
)
