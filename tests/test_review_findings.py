"""Regressions found by reviewing this session's changes (engine and integrations):

- ZeroCopyResponse opened a path's file on the event loop with ``O_NONBLOCK``. For a regular
  file the flag is not inert: a file another process holds a write lease on (``F_SETLEASE``:
  Samba's kernel oplocks, file sync daemons) makes that ``open`` fail with ``EWOULDBLOCK`` at
  once, where a blocking open waits for the lease to be broken (the holder is told by
  ``SIGIO``), as Starlette's ``FileResponse`` does: it answered 500. Now an open on the loop
  that meets a lease is made again in a thread, where it waits.
- ZeroCopyResponse with no body to send (an empty file, a 304/412/416) skipped
  ``StreamingResponse.__call__``, so as a WebSocket denial response it sent ``http.response.*``
  messages on a websocket scope.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from servers import Server, start_uvicorn, stop  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("review")


@pytest.fixture(scope="module")
def server(tmp: Path) -> Iterator[Server]:
    (tmp / "static").mkdir()
    env = {"FASTBODY_TEST_STATIC": str(tmp / "static")}
    running = start_uvicorn("zerocopy_app:app", APPS, tmp, "h11", "asyncio", env=env)
    yield running
    stop(running)


@pytest.mark.parametrize("seen", [False, True], ids=["name-not-seen-lately", "name-seen-just-now"])
def test_path_with_a_write_lease_held_is_served(server: Server, tmp: Path, seen: bool) -> None:
    """A name not seen lately (its stat in a thread) and one seen just now (its stat on the loop):
    either way the open on the loop meets the lease and is made again in a thread."""
    path = tmp / f"leased-{seen}.bin"
    data = os.urandom(4096)
    path.write_bytes(data)
    if seen:
        assert httpx.get(f"{server.url}/path", params={"path": str(path)}, timeout=30).content == data
    holder = os.open(path, os.O_RDONLY)
    broken: list[int] = []

    def release(signum: int, frame: Any) -> None:  # the lease holder gives way at once
        broken.append(signum)
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_UNLCK)

    previous = signal.signal(signal.SIGIO, release)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
                break
            except BlockingIOError:  # the file is open elsewhere: the server's last response closing it
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            except OSError as error:  # not the owner, no CAP_LEASE, a file system without leases
                pytest.skip(f"cannot take a write lease here: {error}")
        answer = httpx.get(f"{server.url}/path", params={"path": str(path)}, timeout=30)
    finally:
        signal.signal(signal.SIGIO, previous)
        os.close(holder)
    assert broken, "the server's open did not even try to break the lease"
    assert answer.status_code == 200, (answer.status_code, server.errors()[-2000:])
    assert answer.content == data


@pytest.mark.parametrize("size", [pytest.param(0, id="empty"), pytest.param(10, id="ten-bytes")])
def test_websocket_denial_response(tmp: Path, size: int) -> None:
    from fastbody.integrations.starlette import ZeroCopyResponse

    path = tmp / f"denied-{size}.txt"
    path.write_bytes(b"x" * size)
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(30)
        return {"type": "websocket.disconnect"}

    scope = {
        "type": "websocket",
        "path": "/",
        "headers": [],
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "extensions": {"websocket.http.response": {}},
    }
    asyncio.run(ZeroCopyResponse(str(path), status_code=403)(scope, receive, send))
    assert sent and all(kind.startswith("websocket.http.response.") for kind in sent), sent
