"""A WSGI app whose bodies gunicorn sends by sendfile and splice under fastbody's workers.

    pip install 'fastbody[gunicorn]'
    gunicorn -k egg:fastbody#sync --chdir examples gunicorn_app:app    # or #gthread --threads 8
    curl -o /dev/null http://127.0.0.1:8000/file    # this file, with Content-Length
    curl -o /dev/null http://127.0.0.1:8000/pipe    # a subprocess's stdout, by splice, chunked
    curl http://127.0.0.1:8000/stats                # bytes moved by each path in this worker

(Files under 32 KiB, like this one, go out with the head in one write; bigger ones by sendfile.)

Nothing here is fastbody-specific: ``wsgi.file_wrapper`` is the standard WSGI hook, and under
stock gunicorn the same app works (the pipe body then passes through Python).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterable
from typing import Any

import fastbody


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    route = environ["PATH_INFO"]
    if route == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"))  # type: ignore[no-any-return]
    if route == "/pipe":
        process = subprocess.Popen(["seq", "1000000"], stdout=subprocess.PIPE)
        threading.Thread(target=process.wait, daemon=True).start()  # reap it when it exits
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](process.stdout)  # type: ignore[no-any-return]
    if route == "/stats":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(dict(fastbody.stats())).encode() + b"\n"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"try /file, /pipe or /stats\n"]
