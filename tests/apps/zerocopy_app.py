"""A Starlette app whose routes answer with fastbody's ``ZeroCopyResponse`` (and a ``StaticFiles``
mount of fastbody's subclass), served by the uvicorn tests of ``test_zerocopy_response.py`` and run
in-process under Starlette's ``TestClient``.

Every body route names its data file with ``?path=``:

- ``/path``: the path itself (ranges, 416, HEAD as FileResponse);
- ``/file``: an opened file object, from ``pos`` (default 0), ``count`` bytes (default: to its end);
- ``/socket``: a socketpair fed with the file's bytes by a thread; ``count=1`` states the length;
- ``/pipe``: ``cat FILE``'s stdout; ``count=1`` states the length; the process is reaped by a
  background task;
- ``/iter``, ``/aiter``: a sync and an async iterator of the file's bytes.

``/static`` serves the directory named by ``FASTBODY_TEST_STATIC`` (when it exists); ``/stats``
answers with the pid, the open fd count and ``fastbody.stats()``, so a test can tell which path
moved the bytes and that nothing leaked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import fastbody
from fastbody.integrations.starlette import StaticFiles, ZeroCopyResponse

_T = TypeVar("_T")
CHUNK = 64 * 1024

HANDED_OVER: list[object] = []
"""Every file, socket and pipe given to a response, kept alive here so that only the response's
own ``close()`` frees its fd, never CPython's reference counting: the fd count in ``/stats`` then
shows whether the response closed what it was given (the app serves a few hundred requests)."""


def handed_over(source: _T) -> _T:
    HANDED_OVER.append(source)
    return source


async def stats(request: Request) -> Response:
    return JSONResponse(
        {"pid": os.getpid(), "fds": len(os.listdir("/proc/self/fd")), "stats": dict(fastbody.stats())}
    )


def _count(request: Request) -> int | None:
    count = request.query_params.get("count")
    return None if count is None else int(count)


async def path_body(request: Request) -> Response:
    return ZeroCopyResponse(request.query_params["path"])


async def file_body(request: Request) -> Response:
    file = open(request.query_params["path"], "rb")  # the response closes it
    file.seek(int(request.query_params.get("pos", 0)))
    return ZeroCopyResponse(handed_over(file), count=_count(request))


async def socket_body(request: Request) -> Response:
    path = request.query_params["path"]
    source, writer = socket.socketpair()

    def feed() -> None:
        # OSError: the response was cut short and closed its end.
        with writer, open(path, "rb") as data, contextlib.suppress(OSError):
            writer.sendfile(data)

    threading.Thread(target=feed, daemon=True).start()
    counted = request.query_params.get("count") == "1"
    return ZeroCopyResponse(handed_over(source), count=os.path.getsize(path) if counted else None)


def _reap(process: subprocess.Popen[bytes]) -> None:
    process.kill()  # a response cut short leaves cat blocked on (or killed by) its pipe
    process.wait(10)


async def pipe_body(request: Request) -> Response:
    path = request.query_params["path"]
    process = subprocess.Popen(["cat", path], stdout=subprocess.PIPE)
    assert process.stdout is not None
    counted = request.query_params.get("count") == "1"
    return ZeroCopyResponse(
        handed_over(process.stdout),
        count=os.path.getsize(path) if counted else None,
        media_type="application/octet-stream",
        background=BackgroundTask(_reap, process),
    )


async def iter_body(request: Request) -> Response:
    path = request.query_params["path"]

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as data:
            while chunk := data.read(CHUNK):
                yield chunk

    return ZeroCopyResponse(chunks(), media_type="application/octet-stream")


async def aiter_body(request: Request) -> Response:
    path = request.query_params["path"]

    async def chunks() -> AsyncIterator[bytes]:
        with open(path, "rb") as data:
            while chunk := data.read(CHUNK):
                yield chunk

    return ZeroCopyResponse(chunks(), media_type="application/octet-stream")


def make_app(static: str | None) -> Starlette:
    routes = [
        Route("/stats", stats),
        Route("/path", path_body, methods=["GET", "HEAD"]),
        Route("/file", file_body),
        Route("/socket", socket_body),
        Route("/pipe", pipe_body),
        Route("/iter", iter_body),
        Route("/aiter", aiter_body),
    ]
    if static is not None and os.path.isdir(static):
        routes.append(Mount("/static", app=StaticFiles(directory=static)))
    return Starlette(routes=routes)


app = make_app(os.environ.get("FASTBODY_TEST_STATIC"))
