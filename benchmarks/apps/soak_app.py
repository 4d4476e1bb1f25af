"""The apps benchmarks/soak.py serves: the same routes for WSGI (``application``, under fastbody's
gunicorn workers) and ASGI (``app``, under fastbody's uvicorn protocols).

    python -m gunicorn -k egg:fastbody#sync --pythonpath benchmarks/apps soak_app:application
    python -m uvicorn soak_app:app --app-dir benchmarks/apps --http fastbody.integrations.uvicorn:H11Protocol

``$SOAK_FILES`` is the directory of bodies, ``$SOAK_UPSTREAM`` the port of
benchmarks/apps/proxy_bench_upstream.py serving that same directory. ``NAME`` is a file name in it.

- ``/tiny``: 3 bytes (the readiness check);
- ``/file?name=NAME``: the file. WSGI: ``wsgi.file_wrapper`` with the app's Content-Length, and
  for a ``Range: bytes=A-B`` a 206 whose body is ``file_wrapper(file, length=B-A+1)`` from
  offset A. ASGI: Starlette's ``FileResponse`` (``http.response.pathsend``);
- ``/zc?name=NAME`` (ASGI): ``ZeroCopyResponse(path)``: ranges (206) and HEAD by fastbody;
- ``/socket?name=NAME``: the file as the upstream sends it, read from a socket: the upstream's
  head is taken off (its length is known), the body is ``file_wrapper(sock, length=N)`` /
  ``ZeroCopyResponse(sock, count=N)`` (spliced);
- ``/pipe?name=NAME``: ``cat``'s stdout: ``file_wrapper(stdout, length=N)`` (WSGI, Content-Length)
  / ``ZeroCopyResponse(stdout)`` (ASGI, no length: chunked). ``cat`` is killed and reaped when
  the response is over, sent or not.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from fastbody.integrations.starlette import ZeroCopyResponse

FILES = os.environ.get("SOAK_FILES", ".")
UPSTREAM = int(os.environ.get("SOAK_UPSTREAM", "0"))
MEDIA = "application/octet-stream"
RANGE = re.compile(r"bytes=(\d+)-(\d+)")
StartResponse = Callable[..., Any]


def path_of(name: str) -> str:
    return os.path.join(FILES, os.path.basename(name))


def upstream_head(size: int) -> bytes:
    """The head benchmarks/apps/proxy_bench_upstream.py answers a ``Connection: close`` GET with."""
    fields = f"Content-Length: {size}\r\nContent-Type: {MEDIA}\r\nConnection: close\r\n"
    return f"HTTP/1.1 200 OK\r\n{fields}\r\n".encode()


def upstream_body(name: str) -> tuple[socket.socket, int]:
    """A blocking socket positioned at the first body byte of the upstream's answer for ``name``."""
    size = os.path.getsize(path_of(name))
    sock = socket.create_connection(("127.0.0.1", UPSTREAM), timeout=30)
    try:
        sock.sendall(f"GET /{name} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
        expected = upstream_head(size)
        head = sock.recv(len(expected), socket.MSG_WAITALL)
        if head != expected:
            raise RuntimeError(f"upstream answered {head!r}")
        sock.settimeout(None)  # blocking, as the engine expects; the upstream is bounded
    except BaseException:
        sock.close()
        raise
    return sock, size


def cat(name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["cat", path_of(name)], stdout=subprocess.PIPE)


def reap(process: subprocess.Popen[bytes]) -> None:
    """Kill ``cat`` if it is still writing (its reader went away) and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(30)


# WSGI


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    query = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    route, name = environ["PATH_INFO"], query.get("name", "")
    wrapper = environ["wsgi.file_wrapper"]
    headers = [("Content-Type", MEDIA)]
    if route == "/tiny":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]
    if route == "/file":
        body = open(path_of(name), "rb")  # noqa: SIM115 - the server closes it with the response
        size = os.fstat(body.fileno()).st_size
        asked = RANGE.fullmatch(environ.get("HTTP_RANGE", ""))
        if asked and int(asked[1]) <= int(asked[2]) < size:
            first, last = int(asked[1]), int(asked[2])
            body.seek(first)
            headers += [("Content-Range", f"bytes {first}-{last}/{size}")]
            start_response("206 Partial Content", [*headers, ("Content-Length", str(last - first + 1))])
            return wrapper(body, length=last - first + 1)  # type: ignore[no-any-return]
        start_response("200 OK", [*headers, ("Content-Length", str(size))])
        return wrapper(body)  # type: ignore[no-any-return]
    if route == "/socket":
        sock, size = upstream_body(name)
        start_response("200 OK", [*headers, ("Content-Length", str(size))])
        return wrapper(sock, length=size)  # type: ignore[no-any-return]
    if route == "/pipe":
        size = os.path.getsize(path_of(name))
        process = cat(name)
        start_response("200 OK", [*headers, ("Content-Length", str(size))])
        wrapped = wrapper(process.stdout, length=size)
        close = wrapped.close

        def close_and_reap() -> None:
            close()
            reap(process)

        wrapped.close = close_and_reap
        return wrapped  # type: ignore[no-any-return]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "14")])
    return [b"no such route\n"]


# ASGI


async def tiny(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def file(request: Request) -> Response:
    return FileResponse(path_of(request.query_params["name"]), media_type=MEDIA)


async def zero_copy(request: Request) -> Response:
    return ZeroCopyResponse(path_of(request.query_params["name"]), media_type=MEDIA)


async def from_socket(request: Request) -> Response:
    sock, size = await asyncio.to_thread(upstream_body, request.query_params["name"])
    return ZeroCopyResponse(sock, count=size, media_type=MEDIA)


class PipeResponse(ZeroCopyResponse):
    """``cat``'s stdout; ``cat`` is killed and reaped when the response is over, however it ended."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        super().__init__(process.stdout, media_type=MEDIA)
        self.process = process

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await asyncio.to_thread(reap, self.process)


async def from_pipe(request: Request) -> Response:
    return PipeResponse(cat(request.query_params["name"]))


app = Starlette(
    routes=[
        Route("/tiny", tiny),
        Route("/file", file),
        Route("/zc", zero_copy, methods=["GET", "HEAD"]),
        Route("/socket", from_socket),
        Route("/pipe", from_pipe),
    ]
)
