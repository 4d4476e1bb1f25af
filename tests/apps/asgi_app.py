"""The ASGI apps the uvicorn tests serve: unmodified Starlette and FastAPI file responses, and raw
ASGI routes that send fastbody's messages themselves.

Routes name their data file with ``?path=``; ``/stats`` answers with ``fastbody.stats()``, the
server's pid and its open fd count, so a test can tell which path moved the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse as FastAPIFileResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

import fastbody

STATIC = os.environ.get("FASTBODY_TEST_STATIC", "/nonexistent")


async def stats(request: Request) -> Response:
    return JSONResponse(
        {"pid": os.getpid(), "fds": len(os.listdir("/proc/self/fd")), "stats": dict(fastbody.stats())}
    )


async def file(request: Request) -> Response:
    return FileResponse(request.query_params["path"])


def _query(scope: Scope) -> dict[str, str]:
    return dict(Request(scope).query_params)


async def zerocopy(scope: Scope, receive: Receive, send: Send) -> None:
    """``http.response.zerocopysend`` of ``offset``/``count`` (or all) of the file, with the
    length stated or not (``length=0``), in ``parts`` pieces after a body message of ``"start:"``
    and ``prefix`` more bytes (a big one is still in the transport's buffer when the file starts)."""
    query = _query(scope)
    offset, count = int(query.get("offset", 0)), query.get("count")
    with open(query["path"], "rb") as source:
        size = os.fstat(source.fileno()).st_size
        total = int(count) if count is not None else size - offset
        prefix = b"start:" + b"p" * int(query.get("prefix", 0))
        headers = [] if query.get("length") == "0" else [(b"content-length", b"%d" % (total + len(prefix)))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": prefix, "more_body": True})
        parts = int(query.get("parts", 1))
        step = total // parts
        for index in range(parts):
            piece = step if index < parts - 1 else total - step * (parts - 1)
            last = index == parts - 1
            message = {"type": "http.response.zerocopysend", "file": source, "offset": offset, "count": piece}
            await send({**message, "more_body": not last})
            offset += piece


async def short(scope: Scope, receive: Receive, send: Send) -> None:
    """A zerocopysend asking for more bytes than the file has, after a head that promised them:
    refused, the connection must close."""
    query = _query(scope)
    with open(query["path"], "rb") as source:
        size = os.fstat(source.fileno()).st_size
        headers = [(b"content-length", b"%d" % (size * 2))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        message = {
            "type": "http.response.zerocopysend",
            "file": source,
            "count": size * 2,
            "more_body": False,
        }
        await send(message)


async def short_held(scope: Scope, receive: Receive, send: Send) -> None:
    """The same count past the file's end under a head without length (held by the server
    until the body's first message): refused before the head, so the client gets a 500."""
    query = _query(scope)
    with open(query["path"], "rb") as source:
        size = os.fstat(source.fileno()).st_size
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.zerocopysend", "file": source, "count": size * 2})


async def pipe(scope: Scope, receive: Receive, send: Send) -> None:
    """``cat FILE``'s stdout by ``fastbody.response.splicesend``; ``length=1``: with its count."""
    query = _query(scope)
    size = os.path.getsize(query["path"])
    process = subprocess.Popen(["cat", query["path"]], stdout=subprocess.PIPE)
    try:
        counted = query.get("length") == "1"
        headers = [(b"content-length", b"%d" % size)] if counted else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        message = {"type": "fastbody.response.splicesend", "source": process.stdout, "more_body": False}
        await send({**message, "count": size if counted else None})
    finally:
        assert process.stdout is not None
        process.stdout.close()
        process.kill()
        process.wait(10)


async def socket_body(scope: Scope, receive: Receive, send: Send) -> None:
    """The file's bytes written into a socketpair by a thread; sent by ``splicesend``."""
    query = _query(scope)
    path = query["path"]
    size = os.path.getsize(path)
    source, writer = socket.socketpair()

    def feed() -> None:
        # OSError: the response was cut short and nobody reads any more.
        with writer, open(path, "rb") as data, contextlib.suppress(OSError):
            writer.sendfile(data)

    threading.Thread(target=feed, daemon=True).start()
    with source:
        counted = query.get("length") == "1"
        headers = [(b"content-length", b"%d" % size)] if counted else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        message = {"type": "fastbody.response.splicesend", "source": source, "more_body": False}
        await send({**message, "count": size if counted else None})


class _Raw:
    """A plain ASGI app as a Starlette route endpoint (a function would be taken for a
    request-response endpoint)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


async def idle_pipe(scope: Scope, receive: Receive, send: Send) -> None:
    """A pipe that sends 6 bytes, then nothing while its writer stays open (a quiet stream)."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"hello\n")
    with open(read_fd, "rb", buffering=0) as source:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            message = {"type": "fastbody.response.splicesend", "source": source, "more_body": False}
            await send(message)
        finally:
            os.close(write_fd)


async def iter_headers(scope: Scope, receive: Receive, send: Send) -> None:
    """A head whose headers are an iterator (the ASGI spec asks for an iterable), then ``hello``."""
    headers = iter([(b"content-length", b"5"), (b"set-cookie", b"a=1"), (b"x-test", b"yes")])
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello", "more_body": False})


async def cancelled(scope: Scope, receive: Receive, send: Send) -> None:
    """A zerocopysend the app cancels half-way (a timeout of its own), then ends the body: the
    response is short, so the server must close the connection rather than go on using it."""
    query = _query(scope)
    with open(query["path"], "rb") as source:
        size = os.fstat(source.fileno()).st_size
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]}
        )
        message = {"type": "http.response.zerocopysend", "file": source, "count": size, "more_body": True}
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(send(message), 0.2)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def str_headers(scope: Scope, receive: Receive, send: Send) -> None:
    """Header names and values as ``str`` (not ASGI's bytes, but uvicorn's h11 path takes them)."""
    headers = [("content-length", "2"), ("x-test", "yes")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok", "more_body": False})


async def start_only(scope: Scope, receive: Receive, send: Send) -> None:
    """``http.response.start`` (200, no length) and nothing else: the app returns unfinished."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-first", b"1")]})


async def start_twice(scope: Scope, receive: Receive, send: Send) -> None:
    """Two ``http.response.start`` messages (the second one is an error the server reports)."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-first", b"1")]})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-second", b"1")]})


def _raw(handler: Any) -> Route:
    return Route(f"/{handler.__name__.removesuffix('_body')}", endpoint=_Raw(handler))


fastapi_app = FastAPI()


@fastapi_app.get("/file")
async def fastapi_file(path: str) -> FastAPIFileResponse:
    return FastAPIFileResponse(path)


routes = [
    Route("/stats", stats),
    Route("/file", file),
    _raw(zerocopy),
    _raw(short),
    _raw(pipe),
    _raw(socket_body),
    Route("/idle-pipe", endpoint=_Raw(idle_pipe)),
    Mount("/fastapi", app=fastapi_app),
    Route("/iter-headers", endpoint=_Raw(iter_headers)),
    Route("/start-only", endpoint=_Raw(start_only)),
    Route("/start-twice", endpoint=_Raw(start_twice)),
    Route("/short-held", endpoint=_Raw(short_held)),
    Route("/str-headers", endpoint=_Raw(str_headers)),
    Route("/cancelled", endpoint=_Raw(cancelled)),
]
if os.path.isdir(STATIC):
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC)))

app = Starlette(routes=routes)
