"""The upstream of benchmarks/proxy.py when nginx is not installed: files by blocking sendfile.

    python proxy_bench_upstream.py --port 9000 --root DIR

``GET /NAME`` answers with the file ``DIR/NAME`` (Content-Length, body by ``os.sendfile`` from
the page cache), keeping the connection alive unless the request says ``Connection: close``;
one thread per connection, so a proxy's pool of kept-alive connections is served in parallel.
Anything else: 404. Standard library only; runs until it is terminated.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import threading

TIMEOUT = 120  # seconds a blocking send or receive may make no progress


def serve(conn: socket.socket, root: str) -> None:
    with conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", TIMEOUT, 0))
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", TIMEOUT, 0))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                try:
                    data = conn.recv(64 << 10)
                except OSError:
                    return
                if not data:
                    return
                pending += data
            head, _, pending = pending.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target = lines[0].split(b" ")[:2]
            close = any(line.lower().replace(b" ", b"") == b"connection:close" for line in lines[1:])
            name = os.path.basename(target.split(b"?")[0].decode("latin-1"))
            path = os.path.join(root, name)
            if not name or not os.path.isfile(path):
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                fields = f"Content-Length: {size}\r\nContent-Type: application/octet-stream\r\n"
                fields += "Connection: close\r\n" if close else ""
                conn.sendall(f"HTTP/1.1 200 OK\r\n{fields}\r\n".encode())
                offset = 0
                while method != b"HEAD" and offset < size:
                    sent = os.sendfile(conn.fileno(), file.fileno(), offset, size - offset)
                    if not sent:
                        return
                    offset += sent
            if close:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    with socket.create_server(("127.0.0.1", args.port), backlog=512) as listener:
        while True:
            conn = listener.accept()[0]
            threading.Thread(target=serve, args=(conn, args.root), daemon=True).start()


if __name__ == "__main__":
    main()
