"""Reading a source for somebody else: what a socket or pipe has ready, and its bytes handed
over in Python, for code that must pass them on itself.

``pending``/``apending`` wait until a socket or pipe is readable and say how many bytes wait
(``FIONREAD``); ``buffered`` gives what a buffered reader (``subprocess.Popen(...).stdout``)
already pulled into Python, invisible to the kernel; ``achunks`` reads a described file, socket
or pipe as chunks without blocking the loop (for a TLS transport, or a server without the
zero-copy extensions) and counts them; ``read_some`` and ``readable_now`` are the plain read
and test. Bodies the engine writes itself never come through here: their chunks are the pump's.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import ExitStack

from . import counters, syscalls
from .drivers import ready_async
from .errors import IncompleteTransfer, TransferError, TransferTimeout
from .pump import CHUNK_LIMIT, Event
from .source import FileBody, Source, StreamBody


def pending(source: object, timeout: float | None, sent: int = 0) -> int:
    """Wait until ``source`` (a socket or pipe) is readable; how many bytes wait, 0 at its end.

    ``sent``: what the body already sent, for the ``TransferTimeout`` raised after ``timeout``
    seconds without data.
    """
    fd = _fd(source)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(None if timeout is None else timeout * 1000):
        raise _stalled(timeout, sent)
    return _size(fd, sent)


async def apending(source: object, timeout: float | None, sent: int = 0) -> int:
    """``pending`` on the running asyncio loop (the fd is watched through a dup)."""
    dup = os.dup(_fd(source))
    try:
        if not await ready_async(asyncio.get_running_loop(), dup, Event.READ, timeout):
            raise _stalled(timeout, sent)
        return _size(dup, sent)
    finally:
        os.close(dup)


def buffered(source: object) -> bytes:
    """The bytes a buffered reader already holds in Python (without waiting for more)."""
    if getattr(source, "peek", None) is None:
        return b""
    return syscalls.buffered_bytes(_fd(source), source)


def readable_now(source: object) -> bool:
    """Whether reading ``source`` would not wait: bytes, its end or an error are there."""
    return syscalls.readable_now(_fd(source))


def hung_up(sock: object) -> bool:
    """Whether the peer of the socket ``sock`` closed or reset it; bytes it sent and nobody
    read yet (a pipelined request) are no hang-up, unlike ``readable_now``."""
    return syscalls.hung_up(_fd(sock))


def read_some(source: object, size: int) -> bytes:
    """Up to ``size`` bytes of ``source`` (a socket, a pipe, a file, any object with ``read``),
    read the ordinary way: for code that must hand bytes to someone else (an iterator that
    middleware or another server consumes), not for bodies the engine moves itself."""
    if isinstance(source, socket.socket):  # through the object: a TLS socket decrypts
        return source.recv(size)
    read = getattr(source, "read", None)
    if read is not None:
        return bytes(read(size))
    return os.read(_fd(source), size)


async def achunks(
    source: Source, *, size: int = 256 << 10, timeout: float | None = None
) -> AsyncGenerator[bytes, None]:
    """The bytes of a described file, socket or pipe as chunks of at most ``size``, read without
    blocking the loop, for a destination the engine cannot write itself (an asyncio transport
    that encrypts them: TLS). Each chunk is counted as copied in ``stats()`` as it is handed
    over. Ends short of the source's ``count`` only with ``IncompleteTransfer``; a stream that
    sends nothing for ``timeout`` seconds raises ``TransferTimeout``. A file is left positioned
    after the last byte handed over when its position was where it started (as ``transfer``)."""
    left, sent = source.length, 0
    with ExitStack() as cleanup:
        read = _chunk_reader(source, timeout, cleanup)
        try:
            while left is None or sent < left:
                chunk = await read(size if left is None else min(size, left - sent))
                if not chunk:
                    break
                sent += len(chunk)
                counters.add(counters.COPY, len(chunk))
                yield chunk
        except TransferError as error:
            error.sent = sent
            raise
    if left is not None and sent < left:
        raise IncompleteTransfer.short(sent, left)


def _chunk_reader(
    source: Source, timeout: float | None, cleanup: ExitStack
) -> Callable[[int], Awaitable[bytes]]:
    """How ``achunks`` reads ``source``: ``read(most)`` gives up to ``most`` bytes, ``b""`` at its
    end; what it sets up (a dup, modes, a file's final position) ``cleanup`` undoes."""
    body = source.body
    if isinstance(body, FileBody):
        loop, file = asyncio.get_running_loop(), body.file
        position = body.offset
        cleanup.callback(source.close)
        if file is not None and hasattr(file, "seek"):  # after the last byte read, as a read() leaves it
            cleanup.callback(lambda: file.seek(position))

        async def read_file(most: int) -> bytes:
            nonlocal position
            chunk = await loop.run_in_executor(None, syscalls.pread, body.fd, most, position)
            position += len(chunk)
            return chunk

        return read_file
    if not isinstance(body, StreamBody):
        raise TypeError(f"achunks() reads files, sockets and pipes, not {source.kind}s")
    buffered = body.buffered
    dup = os.dup(body.fd)
    cleanup.callback(os.close, dup)
    cleanup.enter_context(syscalls.nonblocking(dup))
    if body.tls is not None:  # its own timeout decides whether its calls wait: 0, so they never do
        cleanup.enter_context(syscalls.tls_timeout(body.tls, 0.0))

    async def read_stream(most: int) -> bytes:
        nonlocal buffered
        if buffered is not None:  # what a buffered reader already holds goes first
            held, buffered = syscalls.buffered_bytes(dup, buffered, most), None
            if held:
                return held
        while True:
            data = syscalls.read(dup, most) if body.tls is None else _tls_read(body.tls, most)
            if data is not None:
                return data
            if not await ready_async(asyncio.get_running_loop(), dup, Event.READ, timeout):
                raise _stalled(timeout, 0)

    return read_stream


def _tls_read(sock: ssl.SSLSocket, size: int) -> bytes | None:
    try:
        return sock.recv(size)
    except (ssl.SSLWantReadError, BlockingIOError):
        return None


def _size(fd: int, sent: int) -> int:
    size = syscalls.pending_bytes(fd)
    if size == 0:
        # Readable with nothing to read: the end, or a reset the next read would raise.
        code = syscalls.pending_error(fd)
        if code:
            raise TransferError.make(code, os.strerror(code), sent)
    return min(size, CHUNK_LIMIT)


def _stalled(timeout: float | None, sent: int) -> TransferError:
    return TransferTimeout.make(None, f"source made no progress for {timeout} seconds", sent)


def _fd(source: object) -> int:
    fileno = getattr(source, "fileno", None)
    fd = fileno() if fileno is not None else source
    if not isinstance(fd, int) or fd < 0:
        raise TypeError(f"need a socket or pipe with a file descriptor, not {source!r}")
    return fd
