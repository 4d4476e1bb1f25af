"""The WSGI app the gunicorn tests serve: one route per kind of body.

Every route names its data file with ``?path=``; ``/stats`` answers with ``fastbody.stats()``
and the worker's pid, so a test can tell which path moved the bytes and count the worker's fds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import fastbody

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
Query = dict[str, str]


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    route = environ["PATH_INFO"]
    query = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    handler = ROUTES.get(route)
    if handler is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such route\n"]
    return handler(environ, start_response, query)


def stats(environ: Environ, start_response: StartResponse, query: Query) -> Iterable[bytes]:
    body = json.dumps({"pid": os.getpid(), "stats": dict(fastbody.stats())}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def file(environ: Environ, start_response: StartResponse, query: Query) -> Iterable[bytes]:
    """The file at ``path``; ``cl=1``: the app sets Content-Length; ``skip=N``: start at N;
    ``truncate=N``: the file shrinks to N bytes after the app has stated its length."""
    body = open(query["path"], "rb")
    size = os.fstat(body.fileno()).st_size
    headers = [("Content-Type", "application/octet-stream")]
    skip = int(query.get("skip", 0))
    body.seek(skip)
    if query.get("cl"):
        headers.append(("Content-Length", str(size - skip)))
    if "truncate" in query:
        os.truncate(query["path"], int(query["truncate"]))
    start_response(query.get("status", "200 OK"), headers)
    return environ["wsgi.file_wrapper"](body, 1 << 16)  # type: ignore[no-any-return]


def capped(environ: Environ, start_response: StartResponse, query: Query) -> Iterable[bytes]:
    """The app declares ``cl`` bytes but caps the file wrapper at ``length``: never more than
    ``length`` go out (the connection then closes, short of the declared length)."""
    body = open(query["path"], "rb")
    start_response("200 OK", [("Content-Length", query["cl"])])
    return environ["wsgi.file_wrapper"](body, length=int(query["length"]))  # type: ignore[no-any-return]


def _feed(path: str, stall: float = 0) -> socket.socket:
    """A TCP socket whose peer (on a thread) sends the file at ``path``, waits ``stall`` seconds
    (an upstream that stops sending), then closes."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        writer = socket.create_connection(listener.getsockname())
        reader, _ = listener.accept()

    def send() -> None:
        # OSError: the response was cut off and the reading side closed.
        with writer, open(path, "rb") as data, contextlib.suppress(OSError):
            writer.sendfile(data)
            time.sleep(stall)

    threading.Thread(target=send, daemon=True).start()
    return reader


def socket_body(
    environ: dict[str, Any], start_response: StartResponse, query: dict[str, str]
) -> Iterable[bytes]:
    """The file at ``path`` through a TCP socket; ``length=1``: passed to the file wrapper."""
    source = _feed(query["path"], float(query.get("stall", 0)))
    length = os.path.getsize(query["path"]) if query.get("length") else None
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](source, length=length)  # type: ignore[no-any-return]


def pipe_body(
    environ: dict[str, Any], start_response: StartResponse, query: dict[str, str]
) -> Iterable[bytes]:
    """The file at ``path`` as ``cat``'s stdout; ``length=1``: passed to the file wrapper."""
    process = subprocess.Popen(["cat", query["path"]], stdout=subprocess.PIPE)
    assert process.stdout is not None
    threading.Thread(target=process.wait, daemon=True).start()  # reap it when it exits
    length = os.path.getsize(query["path"]) if query.get("length") else None
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](process.stdout, length=length)  # type: ignore[no-any-return]


def pieces_body(
    environ: dict[str, Any], start_response: StartResponse, query: dict[str, str]
) -> Iterable[bytes]:
    """``Pieces``: ``b"<"``, the first half of the file from a socket, ``b"|"``, the second half
    from the file itself, ``b">"``: each piece one chunk, the big ones moved by the kernel."""
    from fastbody.integrations.gunicorn import Pieces

    size = os.path.getsize(query["path"])
    half = size // 2
    source = _feed(query["path"])
    data = open(query["path"], "rb")
    data.seek(half)

    def pieces() -> Iterator[bytes | tuple[Any, int]]:
        with source, data:
            yield b"<"
            yield source, half
            yield b"|"
            yield data, size - half
            yield b">"

    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](Pieces(pieces()))  # type: ignore[no-any-return]


def iterable(
    environ: dict[str, Any], start_response: StartResponse, query: dict[str, str]
) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello, ", b"plain ", b"iterable\n"]


def file_like(
    environ: dict[str, Any], start_response: StartResponse, query: dict[str, str]
) -> Iterable[bytes]:
    """A file-like object without an fd: unseekable with ``stream=1``, else an ``io.BytesIO``."""
    import io

    with open(query["path"], "rb") as source:
        data = source.read()

    class Stream:  # read() only: no fd, no seek, no length
        def __init__(self) -> None:
            self.inner = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self.inner.read(size)

    body = Stream() if query.get("stream") else io.BytesIO(data)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](body)  # type: ignore[no-any-return]


ROUTES = {
    "/stats": stats,
    "/file": file,
    "/capped": capped,
    "/socket": socket_body,
    "/pipe": pipe_body,
    "/pieces": pieces_body,
    "/iterable": iterable,
    "/file-like": file_like,
}
