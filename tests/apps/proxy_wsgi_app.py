"""The WSGI reverse proxy under test, for ``python -m gunicorn -k egg:fastbody#gthread``.

Mounts as in ``proxy_app``: ``/api``, ``/short`` (1 s response timeout), ``/raw``, ``/dead``;
``/stats`` as there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import fastbody
import fastbody.pipes
from fastbody.integrations.proxy import WSGIReverseProxy

TIMEOUT = float(os.environ.get("PROXY_TIMEOUT", "10"))
PROXIES = {
    "api": WSGIReverseProxy(os.environ["UPSTREAM"], response_timeout=TIMEOUT),
    "short": WSGIReverseProxy(os.environ["UPSTREAM"], response_timeout=1.0),
    "raw": WSGIReverseProxy(os.environ.get("RAW_UPSTREAM", os.environ["UPSTREAM"]), response_timeout=TIMEOUT),
    "dead": WSGIReverseProxy(os.environ.get("DEAD_UPSTREAM", "http://127.0.0.1:9"), connect_timeout=2.0),
}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path: str = environ.get("PATH_INFO", "")
    if path == "/stats":
        body = json.dumps(
            {
                "pid": os.getpid(),
                "fds": len(os.listdir("/proc/self/fd")),
                "idle": {name: len(proxy.pool._idle) for name, proxy in PROXIES.items()},
                "pipes": fastbody.pipes.default_pool.idle(),
                "stats": dict(fastbody.stats()),
            }
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    name, _, rest = path[1:].partition("/")
    proxy = PROXIES.get(name)
    if proxy is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such mount\n"]
    # The mount prefix moves to SCRIPT_NAME, as a WSGI dispatcher does; the proxy forwards the rest.
    environ = {**environ, "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + "/" + name, "PATH_INFO": "/" + rest}
    return proxy(environ, start_response)
