"""What this machine's kernel lets fastbody do, found by trying it once on throwaway fds.

``fastbody serve`` prints it at startup; a reader of the stats wonders why a body was copied.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import pipes as pipe_settings
from . import syscalls


@dataclass(frozen=True)
class Capabilities:
    sendfile: bool  # file → TCP socket
    splice: bool  # socket → pipe → socket
    pipe_size: int  # what a pooled pipe gets (F_SETPIPE_SZ within the user's budget)

    def describe(self) -> str:
        def state(works: bool) -> str:
            return "yes" if works else "no (copy instead)"

        pipes = f"{self.pipe_size >> 10} KiB pipes"
        if self.pipe_size < pipe_settings.MIN_PIPE_SIZE:
            pipes += f" (under {pipe_settings.MIN_PIPE_SIZE >> 10} KiB: socket bodies are copied)"
        return f"sendfile {state(self.sendfile)}, splice {state(self.splice)}, {pipes}"


def probe() -> Capabilities:
    """Try sendfile and splice once each over a loopback TCP pair."""
    if not sys.platform.startswith("linux"):
        return Capabilities(False, False, 0)
    with _tcp_pair() as (sender, receiver):
        return Capabilities(_sendfile_works(sender, receiver), _splice_works(sender, receiver), _pipe_size())


def _sendfile_works(sender: socket.socket, receiver: socket.socket) -> bool:
    with tempfile.TemporaryFile() as file:
        file.write(b"sendfile")
        file.flush()
        try:
            sent = syscalls.sendfile(sender.fileno(), file.fileno(), 0, 8)
        except OSError:
            return False
    return sent == 8 and receiver.recv(8) == b"sendfile"


def _splice_works(sender: socket.socket, receiver: socket.socket) -> bool:
    read_fd, write_fd, _ = syscalls.new_pipe(pipe_settings.PIPE_SIZE)
    try:
        sender.sendall(b"splice")
        moved = syscalls.splice(receiver.fileno(), write_fd, 6)
        return moved == 6 and syscalls.splice(read_fd, sender.fileno(), 6, from_pipe=True) == 6
    except OSError:
        return False
    finally:
        os.close(read_fd)
        os.close(write_fd)


def _pipe_size() -> int:
    read_fd, write_fd, size = syscalls.new_pipe(pipe_settings.PIPE_SIZE)
    os.close(read_fd)
    os.close(write_fd)
    return size


@contextmanager
def _tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname(), timeout=5)
        receiver, _ = listener.accept()
    with sender, receiver:
        receiver.settimeout(5)
        yield sender, receiver
