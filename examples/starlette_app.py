"""A Starlette app whose bodies uvicorn sends by sendfile and splice under fastbody's protocol.

    pip install 'fastbody[uvicorn]'
    uvicorn --app-dir examples starlette_app:app --http fastbody.integrations.uvicorn:AutoProtocol
    curl -o /dev/null http://127.0.0.1:8000/file          # unmodified FileResponse: sendfile
    curl -o /dev/null http://127.0.0.1:8000/static/hello.txt   # fastbody's StaticFiles
    curl -r 0-99 http://127.0.0.1:8000/zero-copy          # ZeroCopyResponse: ranges by sendfile
    curl -o /dev/null http://127.0.0.1:8000/pipe          # a subprocess's stdout, by splice
    curl http://127.0.0.1:8000/stats                      # bytes moved by each path here

Under any other server (stock uvicorn, Hypercorn, TestClient) the same app serves the same bytes
the ordinary way.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from big_file import BIG
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route

import fastbody
from fastbody.integrations.starlette import StaticFiles, ZeroCopyResponse

HERE = Path(__file__).resolve().parent


async def file(request: Request) -> Response:
    return FileResponse(BIG)


async def zero_copy(request: Request) -> Response:
    # Like FileResponse (ETag, ranges, 206/416, HEAD), and every range goes out by sendfile.
    return ZeroCopyResponse(BIG, media_type="application/octet-stream")


async def pipe(request: Request) -> Response:
    process = subprocess.Popen(["cat", str(BIG)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    return ZeroCopyResponse(process.stdout, background=BackgroundTask(process.wait))


async def stats(request: Request) -> Response:
    return JSONResponse(fastbody.stats())


app = Starlette(
    routes=[
        Route("/file", file),
        Route("/zero-copy", zero_copy),
        Route("/pipe", pipe),
        Route("/stats", stats),
        Mount("/static", app=StaticFiles(directory=HERE / "static")),
    ]
)
