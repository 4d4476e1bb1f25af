"""Reading a head off a socket without reading a byte of the body behind it.

A proxy reads an upstream's response head, and each chunk-size line of a chunked body, in
Python; the body bytes between them must stay in the socket for splice. ``take_through``
takes exactly the bytes up to and including a terminator: it looks first (``MSG_PEEK``), then
takes no more than it saw. It is a step of the engine's own kind (a generator that yields what
it waits for), run by the engine's drivers: ``run`` on a blocking socket, ``arun`` on the
asyncio loop. Callers compose steps (``yield from``) into their own and run the whole.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Generator
from typing import Any, TypeVar

from . import syscalls
from .drivers import run_async, run_blocking
from .pump import Event, Request, Wait

T = TypeVar("T")
Step = Generator[Request, Any, T]


class HeadTooLarge(ValueError):
    """No terminator within the limit."""


BLANK_LINE = re.compile(b"\n\r?\n")
"""Where h11 ends a head: at the first blank line, a bare LF counting as a line's end (RFC 9112
2.2 lets a recipient take one). A head must be taken off the socket exactly there: a reader that
ended it elsewhere (at the first CRLF CRLF) would take body bytes for head, or head for body."""


def take_through(sock: socket.socket, terminator: bytes, limit: int) -> Step[bytes]:
    """The bytes up to and including the first ``terminator``, and not one byte more; fewer
    (without the terminator, ``b""`` for none) when the peer closes first. ``HeadTooLarge``
    when ``limit`` bytes came without it."""
    return (yield from take_until(sock, re.compile(re.escape(terminator)), len(terminator), limit))


def take_head(sock: socket.socket, limit: int) -> Step[bytes]:
    """``take_through`` the first blank line as h11 finds it (``BLANK_LINE``)."""
    return (yield from take_until(sock, BLANK_LINE, 3, limit))


def take_until(sock: socket.socket, end: re.Pattern[bytes], longest: int, limit: int) -> Step[bytes]:
    """The bytes up to and including the first match of ``end`` (no match longer than
    ``longest`` bytes), and not one byte more; as ``take_through`` otherwise."""
    taken = b""
    keep = longest - 1  # a match may begin in what was taken already
    while True:
        seen = syscalls.peek(sock, limit + longest - len(taken))
        if seen is None:
            yield Wait(sock.fileno(), Event.READ)
            continue
        if not seen:
            return taken
        tail = taken[-keep:] if keep else b""
        found = end.search(tail + seen)
        if found:
            return taken + syscalls.take(sock, found.end() - len(tail))
        if len(taken) + len(seen) > limit:
            raise HeadTooLarge(f"no {end.pattern!r} within {limit} bytes")
        taken += syscalls.take(sock, len(seen))


def run(step: Step[T], timeout: float | None) -> T:
    """Run ``step`` to its end on this thread; ``TimeoutError`` after ``timeout`` seconds
    without the socket becoming ready."""
    return run_blocking(step, timeout)


async def arun(step: Step[T], timeout: float | None) -> T:
    """``run`` on the running asyncio loop (waits on dups of the fds)."""
    return await run_async(step, timeout)


def run_within(step: Step[T], seconds: float) -> T:
    """Run ``step`` to its end on this thread within ``seconds`` in all: a deadline, not an idle
    timeout (a peer sending a byte at a time cannot stretch it). ``TimeoutError`` when it passes."""
    return run_blocking(step, None, deadline=time.monotonic() + seconds)


async def arun_within(step: Step[T], seconds: float) -> T:
    """``run_within`` on the running asyncio loop (waits on dups of the fds)."""
    return await run_async(step, None, deadline=time.monotonic() + seconds)
