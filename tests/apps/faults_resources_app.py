"""The ASGI app of ``test_faults_resources.py``: fastbody's own ``StaticFiles`` and
``ZeroCopyResponse``, as an application would mount them, under fastbody's uvicorn protocols.

- ``/static/...``: fastbody's ``StaticFiles`` over ``$FASTBODY_TEST_STATIC`` with the settings
  a public site uses (no dotfiles, no symlinks leading out, no index pages);
- ``/file``: ``ZeroCopyResponse`` of the one file ``$FASTBODY_TEST_FILE`` (ranges, 416);
- ``/stats``: the pid, the open fd count and ``fastbody.stats()``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import fastbody

# mypy finds no fastbody.integrations: setuptools maps it onto ./integrations at install time.
from fastbody.integrations.starlette import (  # type: ignore[import-not-found,unused-ignore]
    StaticFiles,
    ZeroCopyResponse,
)


async def stats(request: Request) -> Response:
    return JSONResponse(
        {"pid": os.getpid(), "fds": len(os.listdir("/proc/self/fd")), "stats": dict(fastbody.stats())}
    )


async def file(request: Request) -> Response:
    response: Response = ZeroCopyResponse(os.environ["FASTBODY_TEST_FILE"])
    return response


app = Starlette(
    routes=[
        Route("/stats", stats),
        Route("/file", file, methods=["GET", "HEAD"]),
        Mount(
            "/static",
            app=StaticFiles(
                directory=os.environ["FASTBODY_TEST_STATIC"], dotfiles=False, follow_symlink=False
            ),
        ),
    ]
)
