"""What a socket or pipe has ready: the next chunk of a body whose length nobody knows.

A chunked body's size line goes out before the chunk's bytes, so a chunk is what the source has
waiting when it becomes readable (``FIONREAD``); those bytes then move by splice. Bytes a buffered
reader (``subprocess.Popen(...).stdout``) already pulled into Python are invisible to the kernel:
``buffered`` hands them over first.
"""

from __future__ import annotations

import asyncio
import os
import select

from . import syscalls
from .drivers import ready_async
from .errors import TransferError, TransferTimeout
from .pump import Event

CHUNK_LIMIT = 16 << 20
"""The most one readiness reports, so that one chunk's size line never covers too much."""


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
    read1, peek = getattr(source, "read1", None), getattr(source, "peek", None)
    if read1 is None or peek is None:
        return b""
    with syscalls.nonblocking(_fd(source)):
        try:
            # What the buffer holds; when empty, peek makes one read of at most the buffer's
            # size (never more), which cannot wait on a non-blocking fd.
            held = peek(1)
        except BlockingIOError:
            return b""
        return bytes(read1(len(held))) if held else b""


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
