"""Per-process byte counters, one per path, so users and tests can see what moved the bytes."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

SENDFILE = "sendfile"
SPLICE = "splice"
COPY = "copy"
PATHS = (SENDFILE, SPLICE, COPY)

_lock = threading.Lock()
_bytes: dict[str, int] = dict.fromkeys(PATHS, 0)


def add(path: str, count: int) -> None:
    """Record that ``count`` bytes reached a destination socket by ``path``."""
    with _lock:
        _bytes[path] += count


def stats() -> Mapping[str, int]:
    """Bytes moved in this process so far, by path: ``{"sendfile": ..., "splice": ..., "copy": ...}``."""
    with _lock:
        return dict(_bytes)


def reset() -> None:
    """Set every counter back to zero (a forked child starts with its own counts)."""
    with _lock:
        for path in _bytes:
            _bytes[path] = 0


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at fork time; the child gets a fresh one.
    global _lock
    _lock = threading.Lock()
    reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
