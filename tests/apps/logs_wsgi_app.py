"""The WSGI app of ``test_logs.py``, for ``python -m gunicorn -k egg:fastbody#gthread``:
``/raw/...`` → ``$RAW_UPSTREAM``, ``/dead/...`` → ``$DEAD_UPSTREAM`` (a closed port), by
fastbody's ``WSGIReverseProxy``; ``/file?path=P``: the file by ``wsgi.file_wrapper``;
``/stats``: ``fastbody.stats()``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import fastbody
from fastbody.integrations.proxy import WSGIReverseProxy

PROXIES = {
    "/raw": WSGIReverseProxy(os.environ.get("RAW_UPSTREAM", "http://127.0.0.1:9")),
    "/dead": WSGIReverseProxy(os.environ.get("DEAD_UPSTREAM", "http://127.0.0.1:9"), connect_timeout=2.0),
}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path: str = environ.get("PATH_INFO", "")
    if path == "/stats":
        body = json.dumps({"pid": os.getpid(), "stats": dict(fastbody.stats())}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/file":
        name = parse_qs(environ.get("QUERY_STRING", ""))["path"][0]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(name, "rb"))  # type: ignore[no-any-return]
    for prefix, proxy in PROXIES.items():
        if path.startswith(prefix + "/"):
            environ["SCRIPT_NAME"], environ["PATH_INFO"] = prefix, path[len(prefix) :]
            return proxy(environ, start_response)
    start_response("404 Not Found", [("Content-Length", "0")])
    return []
