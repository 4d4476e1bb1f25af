"""A bounded per-process pool of large pipes for socket → pipe → socket splicing.

Pipe size matters more than splice versus copy: through the default 64 KiB pipe splice costs
more CPU than a userspace copy with a 1 MiB buffer, through a 1 MiB pipe it costs about half.
So the pool hands out large pipes only; when the kernel will not give one (per-user pipe
budget spent, ``pipe-max-size`` lowered) or the pool is at its limit, it hands out nothing and
the caller copies instead.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from . import syscalls

PIPE_SIZE = 1 << 20
"""The size asked for each pipe (Linux's default ``pipe-max-size``)."""

MIN_PIPE_SIZE = 256 << 10
"""A pipe that comes back smaller than this is not worth splicing through."""

MAX_PIPES = 64
"""Pipes in use at once in one process; one more transfer copies instead."""

MAX_IDLE = 16
"""Idle pipes kept for reuse; more are closed when returned."""


@dataclass
class Pipe:
    read_fd: int
    write_fd: int
    size: int

    def close(self) -> None:
        syscalls.close(self.read_fd)
        syscalls.close(self.write_fd)


class PipePool:
    """Hands out empty pipes of at least ``min_size`` bytes, at most ``max_pipes`` at once."""

    def __init__(
        self,
        size: int = PIPE_SIZE,
        min_size: int = MIN_PIPE_SIZE,
        max_pipes: int = MAX_PIPES,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self.size = size
        self.min_size = min_size
        self.max_pipes = max_pipes
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[Pipe] = []
        self._in_use = 0

    def acquire(self) -> Pipe | None:
        """An empty pipe, or ``None`` when the pool is exhausted or only small pipes can be had."""
        with self._lock:
            if self._idle:
                self._in_use += 1
                return self._idle.pop()
            if self._in_use >= self.max_pipes:
                return None
            self._in_use += 1
        try:
            read_fd, write_fd, size = syscalls.new_pipe(self.size)
        except OSError:  # EMFILE/ENFILE: no fds left for a pipe
            self._forget_one()
            return None
        pipe = Pipe(read_fd, write_fd, size)
        if size < self.min_size:
            pipe.close()
            self._forget_one()
            return None
        return pipe

    def release(self, pipe: Pipe, *, empty: bool) -> None:
        """Give ``pipe`` back; one that may still hold bytes (``empty=False``) is closed, never reused."""
        with self._lock:
            self._in_use -= 1
            if empty and len(self._idle) < self.max_idle:
                self._idle.append(pipe)
                return
        pipe.close()

    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def clear(self) -> None:
        """Close the idle pipes (those in use are closed when released)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for pipe in idle:
            pipe.close()

    def _forget_one(self) -> None:
        with self._lock:
            self._in_use -= 1

    def _after_fork_in_child(self) -> None:
        # A pipe shared with the parent would mix two processes' bytes: the child starts empty.
        self._lock = threading.Lock()
        idle, self._idle = self._idle, []
        self._in_use = 0
        for pipe in idle:
            pipe.close()


default_pool = PipePool()
os.register_at_fork(after_in_child=default_pool._after_fork_in_child)
