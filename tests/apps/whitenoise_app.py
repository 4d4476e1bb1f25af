"""whitenoise's WSGI middleware, unchanged, serving ``$WHITENOISE_ROOT`` under ``/static/``
(with its ``.gz`` / ``.br`` siblings); everything else reaches an app whose ``/stats`` answers
with ``fastbody.stats()`` and the worker's pid."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from whitenoise import WhiteNoise

import fastbody


def stats(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({"pid": os.getpid(), "stats": dict(fastbody.stats())}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = WhiteNoise(stats, root=os.environ["WHITENOISE_ROOT"], prefix="static/", max_age=3600)
