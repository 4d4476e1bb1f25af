"""The WSGI app benchmarks/gunicorn.py serves: a file, a socket and a pipe body, each both ways.

- ``/file?path=P``: the file at ``P`` by ``wsgi.file_wrapper``, with the app's Content-Length;
- ``/socket?port=N&size=S&wrap=1``: the bytes a feeder process on ``127.0.0.1:N`` writes;
  ``wrap=1``: ``file_wrapper(sock, length=S)``, else an iterator of 64 KiB ``recv`` chunks
  (the way a stock gunicorn app relays a socket);
- ``/pipe?path=P&wrap=1``: ``cat P``'s stdout, likewise by ``file_wrapper`` or 64 KiB ``read``s.

Every body states its Content-Length, so both servers frame the same way (no chunking).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

StartResponse = Callable[..., Any]
CHUNK = 64 << 10
HEADERS = [("Content-Type", "application/octet-stream")]


def _recv_chunks(sock: socket.socket) -> Iterator[bytes]:
    with sock:
        while data := sock.recv(CHUNK):
            yield data


def _read_chunks(process: subprocess.Popen[bytes]) -> Iterator[bytes]:
    assert process.stdout is not None
    try:
        while data := process.stdout.read(CHUNK):
            yield data
    finally:
        process.stdout.close()
        process.wait(30)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    query = {key: values[-1] for key, values in parse_qs(environ.get("QUERY_STRING", "")).items()}
    route, wrap = environ["PATH_INFO"], bool(query.get("wrap"))
    wrapper = environ["wsgi.file_wrapper"]
    if route == "/file":
        body = open(query["path"], "rb")  # noqa: SIM115 - the server closes it with the response
        size = os.fstat(body.fileno()).st_size
        start_response("200 OK", [*HEADERS, ("Content-Length", str(size))])
        return wrapper(body)  # type: ignore[no-any-return]
    if route == "/socket":
        size = int(query["size"])
        sock = socket.create_connection(("127.0.0.1", int(query["port"])), timeout=60)
        sock.settimeout(None)  # blocking, as the engine expects; the feeder is bounded
        start_response("200 OK", [*HEADERS, ("Content-Length", str(size))])
        return wrapper(sock, length=size) if wrap else _recv_chunks(sock)
    if route == "/pipe":
        size = os.path.getsize(query["path"])
        process = subprocess.Popen(["cat", query["path"]], stdout=subprocess.PIPE)
        assert process.stdout is not None
        start_response("200 OK", [*HEADERS, ("Content-Length", str(size))])
        if not wrap:
            return _read_chunks(process)
        body = wrapper(process.stdout, length=size)
        close = body.close

        def close_and_reap() -> None:
            close()
            process.wait(30)

        body.close = close_and_reap
        return body  # type: ignore[no-any-return]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "14")])
    return [b"no such route\n"]
