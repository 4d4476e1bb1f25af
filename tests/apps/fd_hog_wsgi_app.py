"""A WSGI app that spends its worker's fds: ``/hog?seconds=S`` answers, and a thread takes every
fd the process can get (EMFILE), every one freed meanwhile too, for S seconds, then gives them
all back. ``/stats`` answers the worker's pid. For the sync worker's out-of-fds pause."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs


def _hog(seconds: float) -> None:
    held: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:  # EMFILE: every fd is taken; take the next one freed
            time.sleep(0.001)
    for fd in held:
        os.close(fd)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/hog":
        seconds = float(parse_qs(environ["QUERY_STRING"]).get("seconds", ["2"])[0])
        threading.Thread(target=_hog, args=(seconds,), daemon=True).start()
        body = b"hogging"
    else:
        body = json.dumps({"pid": os.getpid(), "stats": {}}).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
