"""The ASGI apps benchmarks/static.py and benchmarks/fairness.py serve: one directory,
``$FASTBODY_BENCH_STATIC``, by Starlette's own ``StaticFiles`` or by fastbody's, with their
defaults (fastbody's: precompressed siblings looked up, ``Cache-Control: max-age=60``),
mounted at ``/`` in a Starlette app (as ``fastbody serve`` mounts it). Factories, for
granian's and uvicorn's ``--factory``: ``static_bench_app:starlette_static`` and
``static_bench_app:fastbody_static``.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles as StarletteStaticFiles

ROOT = "FASTBODY_BENCH_STATIC"


def _app(static: StarletteStaticFiles) -> Starlette:
    return Starlette(routes=[Mount("/", app=static)])


def starlette_static() -> Starlette:
    """Starlette's ``StaticFiles`` (``FileResponse``: ``http.response.pathsend`` when advertised)."""
    return _app(StarletteStaticFiles(directory=os.environ[ROOT]))


def fastbody_static() -> Starlette:
    """fastbody's ``StaticFiles`` (``ZeroCopyResponse``), as ``fastbody serve`` mounts it."""
    from fastbody.integrations.starlette import StaticFiles

    return _app(StaticFiles(directory=os.environ[ROOT]))
