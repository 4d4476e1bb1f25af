"""The floor of benchmarks/static.py: the least a Python server can do to send a file.

    python static_bench_floor.py --port 9000 --root DIR

Every regular file directly in DIR is opened once at start and its head made once (status,
Content-Length, Content-Type): ``GET /NAME`` is answered by ``send(head, MSG_MORE)`` and a
blocking ``os.sendfile`` loop from that fd, with no parsing beyond the request line, no stat,
no open, no date. One thread and a ``selectors`` loop over the connections (kept alive unless
the request says ``Connection: close``); each response is sent whole before the next request is
read (blocking socket, bounded by ``SO_SNDTIMEO``). Anything else: 404. Standard library only;
runs until it is terminated.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import struct

TIMEOUT = 120  # seconds a blocking send may make no progress
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class File:
    """One file, opened once, and the heads that announce it."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        fields = (
            f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\nContent-Type: application/octet-stream\r\n"
        )
        self.head = f"{fields}\r\n".encode()
        self.closing_head = f"{fields}Connection: close\r\n\r\n".encode()


def load(root: str) -> dict[bytes, File]:
    names = sorted(name for name in os.listdir(root) if os.path.isfile(os.path.join(root, name)))
    return {f"/{name}".encode(): File(os.path.join(root, name)) for name in names}


def answer(conn: socket.socket, request: bytes, files: dict[bytes, File]) -> bool:
    """Send the response to one request head; False when the connection is to be closed."""
    target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
    close = b"connection: close" in request.lower()
    file = files.get(target)
    if file is None:
        conn.sendall(NOT_FOUND)
        return not close
    conn.send(file.closing_head if close else file.head, socket.MSG_MORE)
    offset = 0
    while offset < file.size and (sent := os.sendfile(conn.fileno(), file.fd, offset, file.size - offset)):
        offset += sent
    return not close and offset == file.size


def readable(conn: socket.socket, pending: dict[socket.socket, bytes], files: dict[bytes, File]) -> bool:
    """Read what the client sent and answer every whole request head in it; False: close."""
    try:
        data = conn.recv(64 << 10)
    except OSError:
        return False
    if not data:
        return False
    buffered = pending.get(conn, b"") + data
    while b"\r\n\r\n" in buffered:
        request, _, buffered = buffered.partition(b"\r\n\r\n")
        try:
            if not answer(conn, request, files):
                return False
        except OSError:
            return False
    pending[conn] = buffered
    return True


def serve(listener: socket.socket, files: dict[bytes, File]) -> None:
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn = listener.accept()[0]
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", TIMEOUT, 0))
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ)
            elif not readable(sock, pending, files):
                selector.unregister(sock)
                pending.pop(sock, None)
                sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    files = load(args.root)
    with socket.create_server(("127.0.0.1", args.port), backlog=512) as listener:
        serve(listener, files)


if __name__ == "__main__":
    main()
