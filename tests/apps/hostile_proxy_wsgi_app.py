"""The WSGI reverse proxy in front of the hostile-upstream tests, for ``python -m gunicorn -k
egg:fastbody#gthread hostile_proxy_wsgi_app:app``. Mounts as in ``hostile_proxy_app``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import fastbody
from fastbody.integrations.proxy import WSGIReverseProxy

PROXY = WSGIReverseProxy(os.environ["RAW_UPSTREAM"], response_timeout=1.0)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path: str = environ.get("PATH_INFO", "")
    if path == "/stats":
        info = {"pid": os.getpid(), "idle": len(PROXY.pool._idle), "stats": dict(fastbody.stats())}
        body = json.dumps(info)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body.encode()]
    if not path.startswith("/raw/"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such mount\n"]
    environ = {**environ, "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + "/raw", "PATH_INFO": path[4:]}
    return PROXY(environ, start_response)
