"""A plain ASGI app that answers with handoff headers, for ``test_handoff_asgi.py``.

``/hand`` sends one head and then a body, as told by its query string:

- ``name``, ``value``: the handoff header (``X-Sendfile`` / ``X-Accel-Redirect``) and its value;
- ``status``: the head's status (default 200);
- ``type``, ``disposition``, ``etag``, ``length``: a Content-Type, Content-Disposition, ETag
  and Content-Length of the app's own;
- ``chunks``: how many 64 KiB body messages the app sends after the head (default 0), then an
  empty last one; the app's body is ``app body`` repeated;
- ``iterator=1``: the head's headers as an iterator (read once).

``/stats`` answers with the pid, the open fd count and ``fastbody.stats()``.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import fastbody

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]

APP_CHUNK = b"app body" * (8 << 10)  # 64 KiB


async def app(scope: Message, receive: Callable[[], Awaitable[Message]], send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/stats":
        if scope["query_string"] == b"collect=1":
            gc.collect()  # what only a failed request's frames still held is freed now
        await stats(send)
    else:
        await hand(parse_qs(scope["query_string"].decode("latin-1")), send)


async def stats(send: Send) -> None:
    info = {"pid": os.getpid(), "fds": len(os.listdir("/proc/self/fd")), "stats": dict(fastbody.stats())}
    body = json.dumps(info).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


async def hand(query: dict[str, list[str]], send: Send) -> None:
    def field(name: str) -> str | None:
        return query[name][0] if name in query else None

    headers: list[tuple[bytes, bytes]] = []
    for header, key in [
        ("content-type", "type"),
        ("content-disposition", "disposition"),
        ("etag", "etag"),
        ("content-length", "length"),
        (field("name") or "x-none", "value"),
    ]:
        if (value := field(key)) is not None:
            headers.append((header.encode("latin-1"), value.encode("latin-1")))
    start = {"type": "http.response.start", "status": int(field("status") or 200), "headers": headers}
    if field("iterator"):
        start["headers"] = iter(headers)
    await send(start)
    for _ in range(int(field("chunks") or 0)):
        await send({"type": "http.response.body", "body": APP_CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
