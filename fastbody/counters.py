"""Per-process byte counters, one per path, so users and tests can see what moved the bytes;
and a subscription for observers (metrics) that want each counted batch and each response's end.

    class Recorder:
        def moved(self, path: str, count: int) -> None: ...      # every batch counted in stats()
        def ended(self, path: str, outcome: str) -> None: ...    # every response body that ended

    unsubscribe = counters.subscribe(Recorder())

``moved`` hears every byte ``stats()`` counts, as it is counted. ``ended`` hears each response
body a ``ResponseWriter`` sent, once, when the body ended: ``path`` is the path that moved most
of its bytes (``NONE`` when it had none: a HEAD, an empty body, a failure before the first byte;
the bytes by path are ``moved``'s to tell), ``outcome`` one of ``OUTCOMES``. Listeners run on
the thread that moved the bytes, outside every fastbody lock; they must be quick and must not
raise (one that raises is logged and dropped: observing never breaks a transfer). With nobody
subscribed the counting costs what it did before: one check of an empty tuple.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

SENDFILE = "sendfile"
SPLICE = "splice"
COPY = "copy"
PATHS = (SENDFILE, SPLICE, COPY)
NONE = "none"
"""The path of a response that moved no body byte."""

COMPLETE = "complete"  # the whole body went out
CLIENT_GONE = "client_gone"  # the client closed or reset the connection (or the transfer was cancelled)
TIMEOUT = "timeout"  # no progress for the send timeout (a client that stopped reading)
SHORT_SOURCE = "short_source"  # a file, pipe or iterable ended before the body's length
UPSTREAM = "upstream"  # the body's upstream (a socket source, a proxy's upstream) failed or ended early
ERROR = "error"  # anything else: an app's iterator that raised, a body longer than its length
OUTCOMES = (COMPLETE, CLIENT_GONE, TIMEOUT, SHORT_SOURCE, UPSTREAM, ERROR)

log = logging.getLogger("fastbody")

_lock = threading.Lock()
_bytes: dict[str, int] = dict.fromkeys(PATHS, 0)


class Listener(Protocol):
    """What ``subscribe`` takes."""

    def moved(self, path: str, count: int) -> None:
        """``count`` body bytes reached a destination socket by ``path``."""

    def ended(self, path: str, outcome: str) -> None:
        """A response body ended with ``outcome``; ``path`` moved most of its bytes."""


_listeners: tuple[Listener, ...] = ()  # replaced whole, never changed in place: read without a lock


def add(path: str, count: int) -> None:
    """Record that ``count`` bytes reached a destination socket by ``path``."""
    with _lock:
        _bytes[path] += count
    if _listeners:
        _tell_moved(path, count)


def response_ended(moved: Mapping[str, int], outcome: str) -> None:
    """Tell listeners that a response body ended with ``outcome``; ``moved``: its bytes by path."""
    if _listeners:
        _tell_ended(main_path(moved), outcome)


def main_path(moved: Mapping[str, int]) -> str:
    """The path that moved most of ``moved`` (the first of ``PATHS`` on a tie), ``NONE`` if none did."""
    best, most = NONE, 0
    for path in PATHS:
        if moved.get(path, 0) > most:
            best, most = path, moved[path]
    return best


def subscribe(listener: Listener) -> Callable[[], None]:
    """Have ``listener`` hear every counted batch and every response's end, in this process and
    in the processes it forks from now on; the function that unsubscribes it."""
    global _listeners
    with _lock:
        if listener not in _listeners:
            _listeners = (*_listeners, listener)
    return lambda: unsubscribe(listener)


def unsubscribe(listener: Listener) -> None:
    global _listeners
    with _lock:
        _listeners = tuple(known for known in _listeners if known is not listener)


def listening() -> bool:
    """Whether anybody subscribed (a response then keeps its bytes by path, to say its path)."""
    return bool(_listeners)


def stats() -> Mapping[str, int]:
    """Bytes moved in this process so far, by path: ``{"sendfile": ..., "splice": ..., "copy": ...}``."""
    with _lock:
        return dict(_bytes)


def reset() -> None:
    """Set every counter back to zero (a forked child starts with its own counts)."""
    with _lock:
        for path in _bytes:
            _bytes[path] = 0


def _tell_moved(path: str, count: int) -> None:
    for listener in _listeners:
        try:
            listener.moved(path, count)
        except Exception:
            _drop(listener)


def _tell_ended(path: str, outcome: str) -> None:
    for listener in _listeners:
        try:
            listener.ended(path, outcome)
        except Exception:
            _drop(listener)


def _drop(listener: Listener) -> None:
    log.exception("fastbody: counters listener %r raised: unsubscribed", listener)
    unsubscribe(listener)


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at fork time; the child gets a fresh one.
    # Listeners stay subscribed: a server that installs its metrics before forking keeps them.
    global _lock
    _lock = threading.Lock()
    reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
