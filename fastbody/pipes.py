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

from . import config, syscalls

# These names hold what ``fastbody.config`` says (``FASTBODY_PIPE_SIZE``, ``FASTBODY_MAX_PIPES``,
# ``FASTBODY_MAX_IDLE_PIPES``, ``fastbody.configure(...)``); ``configure`` rewrites them and the
# default pool's limits.

PIPE_SIZE = config.current().pipe_size
"""The size asked for each pipe (1 MiB unless configured: Linux's default ``pipe-max-size``)."""

WORTH_SPLICING = 256 << 10
"""A pipe smaller than this is not worth splicing through (a 1 MiB copy buffer beats it)..."""


def min_pipe_size(size: int) -> int:
    """...unless smaller pipes were asked for: then a pipe of the size asked is accepted."""
    return min(WORTH_SPLICING, size)


MIN_PIPE_SIZE = min_pipe_size(PIPE_SIZE)
"""A pipe that comes back smaller than this is not spliced through."""

MAX_PIPES = config.current().max_pipes
"""Pipes in use at once in one process (64 unless configured); one more transfer copies instead."""

MAX_IDLE = config.current().max_idle_pipes
"""Idle pipes kept for reuse (16 unless configured); more are closed when returned."""


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
        size: int | None = None,
        min_size: int | None = None,
        max_pipes: int | None = None,
        max_idle: int | None = None,
    ) -> None:
        # None: what the configuration says now (the module names, read when the pool is made)
        self.size = PIPE_SIZE if size is None else size
        self.min_size = min_pipe_size(self.size) if min_size is None else min_size
        self.max_pipes = MAX_PIPES if max_pipes is None else max_pipes
        self.max_idle = MAX_IDLE if max_idle is None else max_idle
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
