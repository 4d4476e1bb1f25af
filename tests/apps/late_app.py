"""An ASGI app that answers only after its client went away: it waits for ``http.disconnect``,
then sends a head and a zero-copy body, as an app that was slow to answer would. What ``send``
did with them is kept for ``/stats`` (uvicorn drops messages to a closed connection; the
zero-copy ones must not fail differently)."""

from __future__ import annotations

import json
import os
from typing import Any

import fastbody

OUTCOMES: list[str] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stats":
        body = json.dumps({"stats": fastbody.stats(), "outcomes": OUTCOMES}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    while (await receive())["type"] != "http.disconnect":
        pass
    path = os.environ["FASTBODY_TEST_FILE"]
    length = str(os.path.getsize(path)).encode()
    try:
        with open(path, "rb") as file:  # a head with its length: not held back, sent (dropped) at once
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]}
            )
            await send({"type": "http.response.zerocopysend", "file": file, "more_body": False})
        OUTCOMES.append("sent")
    except Exception as error:
        OUTCOMES.append(f"{type(error).__name__}: {error}")
