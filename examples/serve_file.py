"""Serve one file over HTTP with fastbody.transfer and show which path moved it.

    python examples/serve_file.py                   # demo: serve a 64 MiB file, fetch it, print stats
    python examples/serve_file.py FILE --port 8000  # serve FILE until Ctrl-C
    curl -o /dev/null http://127.0.0.1:8000/        # ...and fetch it

A deliberately tiny HTTP/1.1 server (one thread per connection, GET only): the head is
written by Python, the body by ``fastbody.transfer`` (sendfile for a file).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
import sys
import tempfile
import threading
import urllib.request

import fastbody


def serve_connection(conn: socket.socket, path: str) -> None:
    with conn, conn.makefile("rb") as requests:
        while True:
            request_line = requests.readline(65536)
            if not request_line:
                return
            while requests.readline(65536) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed for this demo
            method = request_line.split(b" ", 1)[0]
            with open(path, "rb") as body:
                size = os.fstat(body.fileno()).st_size
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"
                head += "Content-Type: application/octet-stream\r\n\r\n"
                conn.sendall(head.encode())
                if method != b"HEAD":
                    before = fastbody.stats()
                    fastbody.transfer(conn, body, timeout=30)
                    moved = {k: v - before[k] for k, v in fastbody.stats().items() if v != before[k]}
                    print(f"sent {size} bytes of {path}: {moved}", flush=True)


def serve(path: str, host: str, port: int, ready: threading.Event | None = None) -> None:
    with socket.create_server((host, port)) as listener:
        print(f"serving {path} on http://{host}:{listener.getsockname()[1]}/", flush=True)
        if ready is not None:
            ready.port = listener.getsockname()[1]  # type: ignore[attr-defined]
            ready.set()
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve_connection, args=(conn, path), daemon=True).start()


def demo() -> None:
    with tempfile.NamedTemporaryFile(suffix=".bin") as file:
        data = os.urandom(64 << 20)
        file.write(data)
        file.flush()
        ready = threading.Event()
        threading.Thread(target=serve, args=(file.name, "127.0.0.1", 0, ready), daemon=True).start()
        ready.wait(10)
        url = f"http://127.0.0.1:{ready.port}/"  # type: ignore[attr-defined]
        for _ in range(3):
            with urllib.request.urlopen(url) as response:
                got = response.read()
            same = hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            print(f"fetched {len(got)} bytes, sha256 {'matches' if same else 'DIFFERS'}")
            if not same:
                sys.exit(1)
        print(f"fastbody.stats() in this process: {dict(fastbody.stats())}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", nargs="?", help="the file to serve (default: run the self-contained demo)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.file is None:
        demo()
        return
    if not os.path.isfile(args.file):
        parser.error(f"not a regular file: {args.file}")
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.file, args.host, args.port)


if __name__ == "__main__":
    main()
