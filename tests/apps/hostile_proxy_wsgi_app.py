"""The WSGI reverse proxy in front of the hostile-upstream tests, for ``python -m gunicorn -k
egg:fastbody#gthread hostile_proxy_wsgi_app:app`` (or ``#sync``). Mounts as in
``hostile_proxy_app``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import fastbody
from fastbody.integrations.proxy import WSGIReverseProxy

PROXY = WSGIReverseProxy(os.environ["RAW_UPSTREAM"], response_timeout=1.0)
RECORD = (
    WSGIReverseProxy(os.environ["RECORD_UPSTREAM"], response_timeout=1.0)
    if "RECORD_UPSTREAM" in os.environ
    else None
)
MOUNTS = {"/raw": PROXY, **({"/rec": RECORD} if RECORD else {})}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path: str = environ.get("PATH_INFO", "")
    if path == "/stats":
        info = {"pid": os.getpid(), "idle": len(PROXY.pool._idle), "stats": dict(fastbody.stats())}
        info["idle_rec"] = len(RECORD.pool._idle) if RECORD else 0
        body = json.dumps(info)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body.encode()]
    mount = path[:4]
    if mount not in MOUNTS or path[4:5] != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such mount\n"]
    environ = {**environ, "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + mount, "PATH_INFO": path[4:]}
    answer: Iterable[bytes] = MOUNTS[mount](environ, start_response)
    return answer
