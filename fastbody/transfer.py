"""The public entry points: ``transfer`` (blocking) and ``atransfer`` (asyncio)."""

from __future__ import annotations

import socket
import ssl
import stat

from . import syscalls
from .drivers import run_async, run_blocking
from .pipes import PipePool, default_pool
from .pump import Destination, Pump, pump
from .source import Body, Source, classify


def transfer(
    sock: socket.socket,
    source: object,
    *,
    offset: int | None = None,
    count: int | None = None,
    timeout: float | None = None,
) -> int:
    """Send the bytes of ``source`` to the connected stream socket ``sock``; return how many.

    ``source`` is a regular file (binary file object or path), a socket, the read end of a
    pipe or FIFO, a bytes-like object, a file-like object, or an iterable of bytes. Files go
    by ``sendfile(2)``, sockets and pipes by ``splice(2)``, everything else by a buffered copy.

    ``count`` bytes exactly (the rest of the source stays unread), or until the source ends
    when ``None``. ``offset`` (files only) starts there and leaves the file position alone;
    ``None`` starts at the position and leaves it after the last byte sent. ``timeout``: the
    seconds the transfer may make no progress before ``TransferTimeout``.
    """
    return run_blocking(_pump(sock, source, offset, count, timeout, blocking=True), timeout)


async def atransfer(
    sock: socket.socket,
    source: object,
    *,
    offset: int | None = None,
    count: int | None = None,
    timeout: float | None = None,
) -> int:
    """``transfer`` on the running asyncio loop, for a non-blocking ``sock`` it does not own.

    ``source`` may also be an async iterable of bytes. The loop is never blocked; the fds are
    watched through dups, so ``sock`` may belong to a transport.
    """
    if sock.gettimeout() != 0.0:  # asyncio's TransportSocket wrappers answer 0
        raise ValueError("atransfer() needs a non-blocking socket (sock.setblocking(False))")
    return await run_async(_pump(sock, source, offset, count, timeout, blocking=False), timeout)


def _pump(
    sock: socket.socket,
    source: object,
    offset: int | None,
    count: int | None,
    timeout: float | None,
    *,
    blocking: bool,
    pool: PipePool = default_pool,
) -> Pump:
    if count is not None and count < 0:
        raise ValueError(f"count must be None or >= 0, not {count}")
    if offset is not None and offset < 0:
        raise ValueError(f"offset must be None or >= 0, not {offset}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0, not {timeout}")
    body, count = source_body(source, offset, count, blocking=blocking)
    return pump(destination(sock), body, count, pool, timeout=timeout, in_kernel=blocking)


def source_body(
    source: object, offset: int | None, count: int | None, *, blocking: bool
) -> tuple[Body, int | None]:
    """The body to move and the count: from a ``Source`` described earlier, or classified now."""
    if isinstance(source, Source):
        if offset is not None:
            raise ValueError("offset belongs in describe(), not beside a described source")
        return source.body, source.count if count is None else count
    return classify(source, offset, allow_async=not blocking), count


def destination(sock: socket.socket) -> Destination:
    if type(sock) is socket.socket and _raw_type(sock) == socket.SOCK_STREAM:  # the usual case
        fd = sock.fileno()
        if fd >= 0:
            return Destination(fd, handle=sock)
    fileno = getattr(sock, "fileno", None)
    fd = fileno() if fileno is not None else -1
    # A socket object's fd is a socket (it could not have been made otherwise): no fstat.
    known = isinstance(sock, socket.socket) and _raw_type(sock) == socket.SOCK_STREAM
    if not isinstance(fd, int) or fd < 0 or (not known and syscalls.file_type(fd) != stat.S_IFSOCK):
        raise TypeError(f"sock must be a connected stream socket, not {sock!r}")
    if isinstance(sock, ssl.SSLSocket):
        return Destination(fd, tls=sock)
    if isinstance(sock, socket.socket):
        return Destination(fd, handle=sock)
    # An asyncio transport's socket (asyncio's TransportSocket, uvloop's PseudoSocket) is no
    # socket object, but says its fd is non-blocking, as the transport keeps it.
    gettimeout = getattr(sock, "gettimeout", None)
    return Destination(fd, nonblocking=gettimeout is not None and gettimeout() == 0)


def _raw_type(sock: socket.socket) -> int:
    """``sock.type`` as the C socket below holds it: ``socket.socket.type`` makes an enum member
    of it on every read, which costs more than the rest of ``destination``."""
    kind: int = super(socket.socket, sock).type
    return kind
