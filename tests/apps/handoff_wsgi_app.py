"""WSGI apps the handoff tests serve: responses that name a file in ``X-Sendfile`` or
``X-Accel-Redirect`` instead of sending it, and Flask's ``send_file`` (ranges, ``USE_X_SENDFILE``).

``app`` (plain WSGI) routes:

- ``/xsendfile?path=P``: ``X-Sendfile: P`` with a body of its own (``APP_BODY``), a stale ETag,
  Last-Modified and Content-Length of that body, a cookie and Cache-Control; ``ct=`` / ``cd=``:
  the Content-Type / Content-Disposition to set (none: no Content-Type at all); ``status=``;
- ``/accel?uri=U``: the same with ``X-Accel-Redirect: U``;
- ``/lazy?path=P``: ``X-Sendfile`` from a generator that starts the response when iterated;
- ``/stats``: ``fastbody.stats()`` and the worker's pid.

``flask_app``: ``/file?path=P`` is ``send_file(P)`` (conditional: werkzeug answers ranges);
``flask_xsendfile_app``: the same with ``USE_X_SENDFILE = True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from flask import Flask, request, send_file

import fastbody

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

APP_BODY = b"the app's own body, never the file\n"


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    query = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    route = environ["PATH_INFO"]
    if route == "/stats":
        return stats(start_response)
    if route == "/lazy":
        return lazy(start_response, query["path"])
    if route in ("/xsendfile", "/accel"):
        name, value = (
            ("X-Sendfile", query["path"]) if route == "/xsendfile" else ("X-Accel-Redirect", query["uri"])
        )
        headers = [(name, value), *_app_headers(query)]
        start_response(query.get("status", "200 OK"), headers)
        return [APP_BODY]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such route\n"]


def _app_headers(query: dict[str, str]) -> list[tuple[str, str]]:
    """What an app sends beside a handoff header: its own (empty-body) framing and validators,
    which the server replaces, and headers of its own, which the server keeps."""
    headers = [
        ("Content-Length", str(len(APP_BODY))),
        ("ETag", '"the-app-s-etag"'),
        ("Last-Modified", "Mon, 01 Jan 2001 00:00:00 GMT"),
        ("Set-Cookie", "session=abc; Path=/"),
        ("Cache-Control", "private, max-age=60"),
    ]
    if "ct" in query:
        headers.append(("Content-Type", query["ct"]))
    if "cd" in query:
        headers.append(("Content-Disposition", query["cd"]))
    return headers


def lazy(start_response: StartResponse, path: str) -> Iterator[bytes]:
    start_response("200 OK", [("X-Sendfile", path), ("Content-Length", str(len(APP_BODY)))])
    yield APP_BODY


def stats(start_response: StartResponse) -> Iterable[bytes]:
    body = json.dumps({"pid": os.getpid(), "stats": dict(fastbody.stats())}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _flask(use_x_sendfile: bool) -> Flask:
    flask = Flask(__name__)
    flask.config["USE_X_SENDFILE"] = use_x_sendfile

    @flask.get("/file")
    def file():  # type: ignore[no-untyped-def]
        return send_file(request.args["path"], mimetype="application/octet-stream")

    @flask.get("/stats")
    def stats():  # type: ignore[no-untyped-def]
        return {"pid": os.getpid(), "stats": dict(fastbody.stats())}

    return flask


flask_app = _flask(use_x_sendfile=False)
flask_xsendfile_app = _flask(use_x_sendfile=True)
