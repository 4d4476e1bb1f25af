"""An ASGI app whose responses end in each way an ASGI response can, for
``test_metrics_responses.py``: ``/stats`` answers ``fastbody.stats()``, ``/m`` this process's
fastbody counters (Prometheus text, no multiprocess directory); the data file is
``$FASTBODY_TEST_FILE``; ``/px/...`` is a ``ReverseProxy`` to ``127.0.0.1:$FASTBODY_TEST_UPSTREAM``.

- ``/chunked``: two zero-copy pieces with no length, then the end as an empty body message;
- ``/parts``: a Content-Length filled by a file piece and a literal tail (as a multipart 206);
- ``/short``: a Content-Length the one file piece leaves unfilled (a file that shrank);
- ``/file``: the whole file by ``pathsend`` (HEAD too).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from prometheus_client import generate_latest

import fastbody
from fastbody.integrations import metrics
from fastbody.integrations.proxy import ReverseProxy

metrics.install()
DATA = os.environ["FASTBODY_TEST_FILE"]
PROXY = ReverseProxy(f"http://127.0.0.1:{os.environ['FASTBODY_TEST_UPSTREAM']}")
ZEROCOPY = "http.response.zerocopysend"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path.startswith("/px/"):
        await PROXY({**scope, "root_path": "/px"}, receive, send)
    elif path == "/stats":
        body = json.dumps({"stats": fastbody.stats()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif path == "/m":
        body = generate_latest()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif path == "/chunked":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"transfer-encoding", b"chunked")]}
        )
        with open(DATA, "rb") as file:
            for offset in (0, 100_000):
                await send(
                    {"type": ZEROCOPY, "file": file, "offset": offset, "count": 100_000, "more_body": True}
                )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/parts":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100005")]}
        )
        with open(DATA, "rb") as file:
            await send({"type": ZEROCOPY, "file": file, "offset": 0, "count": 100_000, "more_body": True})
        await send({"type": "http.response.body", "body": b"--end", "more_body": False})
    elif path == "/short":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"200000")]}
        )
        # (OSError: the server has closed the connection and logged why)
        with open(DATA, "rb") as file, contextlib.suppress(OSError):
            await send({"type": ZEROCOPY, "file": file, "offset": 0, "count": 100_000, "more_body": False})
    elif path == "/file":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": DATA})
