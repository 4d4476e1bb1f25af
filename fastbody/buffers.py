"""The copy path's buffers: anonymous memory maps, lent one per transfer and given back.

A 1 MiB ``bytearray`` comes from malloc, and once one such block has been freed glibc raises
its mmap threshold and serves the next ones from the heap of the thread that asks: sixty
transfers copying at once on sixty threads left ~20 MiB of arenas resident after they ended,
more with each round. A memory map goes back to the kernel the moment it is closed, so a burst
of copies costs its memory only while it lasts. A few idle buffers are kept (their pages stay
mapped), so a steady trickle of copies makes no mmap/munmap call per transfer.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

SIZE = 1 << 20
"""Every buffer's size: with 1 MiB a userspace copy costs half what 64 KiB chunks do."""

MAX_IDLE = 4
"""Idle buffers kept for reuse; more are unmapped when given back."""

_lock = threading.Lock()
_idle: list[mmap.mmap] = []


@contextmanager
def lent(size: int = SIZE) -> Iterator[memoryview]:
    """A writable view of ``size`` bytes (at most ``SIZE``, at least one), for as long as the
    ``with`` block runs. The view is released when it ends: the pump's slices of it live only
    in the frames of that block, so a buffer given back is written by the next transfer alone."""
    with _lock:
        buffer = _idle.pop() if _idle else None
    if buffer is None:
        # Private: a shared anonymous map would be the same memory in a forked child.
        buffer = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE)
    view = memoryview(buffer)[: max(1, min(size, SIZE))]
    try:
        yield view
    finally:
        view.release()
        _give_back(buffer)


def _give_back(buffer: mmap.mmap) -> None:
    with _lock:
        if len(_idle) < MAX_IDLE:
            _idle.append(buffer)
            return
    # BufferError: a slice of the view is still referenced (a traceback's frame); the map is
    # unmapped when that goes.
    with suppress(BufferError):
        buffer.close()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at the fork; the idle maps are private copies now.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
