"""whitenoise's WSGI middleware, unchanged, serving ``$FASTBODY_COMPARE_ROOT`` at ``/`` with
``index_file=True`` and ``max_age=60`` (as ``fastbody serve``), for ``test_static_comparison.py``
and ``benchmarks/static_behaviour.py``. What is not a static file reaches a fallback app:
``/stats`` answers with the pid and ``fastbody.stats()``, anything else is a plain 404."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from whitenoise import WhiteNoise

import fastbody


def fallback(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/stats":
        status, kind = "200 OK", "application/json"
        body = json.dumps({"pid": os.getpid(), "stats": dict(fastbody.stats())}).encode()
    else:
        status, kind, body = "404 Not Found", "text/plain", b"Not Found"
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


app = WhiteNoise(fallback, root=os.environ["FASTBODY_COMPARE_ROOT"], index_file=True, max_age=60)
