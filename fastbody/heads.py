"""Reading a head off a socket without reading a byte of the body behind it.

A proxy reads an upstream's response head, and each chunk-size line of a chunked body, in
Python; the body bytes between them must stay in the socket for splice. ``take_through``
takes exactly the bytes up to and including a terminator: it looks first (``MSG_PEEK``), then
takes no more than it saw. It is a step of the engine's own kind (a generator that yields what
it waits for), run by the engine's drivers: ``run`` on a blocking socket, ``arun`` on the
asyncio loop. Callers compose steps (``yield from``) into their own and run the whole.
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any, TypeVar

from . import syscalls
from .drivers import run_async, run_blocking
from .pump import Event, Request, Wait

T = TypeVar("T")
Step = Generator[Request, Any, T]


class HeadTooLarge(ValueError):
    """No terminator within the limit."""


def take_through(sock: socket.socket, terminator: bytes, limit: int) -> Step[bytes]:
    """The bytes up to and including the first ``terminator``, and not one byte more; fewer
    (without the terminator, ``b""`` for none) when the peer closes first. ``HeadTooLarge``
    when ``limit`` bytes came without it."""
    taken = b""
    keep = len(terminator) - 1  # a terminator may begin in what was taken already
    while True:
        seen = syscalls.peek(sock, limit + len(terminator) - len(taken))
        if seen is None:
            yield Wait(sock.fileno(), Event.READ)
            continue
        if not seen:
            return taken
        found = (taken[-keep:] + seen if keep else seen).find(terminator)
        if found >= 0:
            need = found + len(terminator) - min(len(taken), keep)
            return taken + syscalls.take(sock, need)
        if len(taken) + len(seen) > limit:
            raise HeadTooLarge(f"no {terminator!r} within {limit} bytes")
        taken += syscalls.take(sock, len(seen))


def run(step: Step[T], timeout: float | None) -> T:
    """Run ``step`` to its end on this thread; ``TimeoutError`` after ``timeout`` seconds
    without the socket becoming ready."""
    return run_blocking(step, timeout)


async def arun(step: Step[T], timeout: float | None) -> T:
    """``run`` on the running asyncio loop (waits on dups of the fds)."""
    return await run_async(step, timeout)
