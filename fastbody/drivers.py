"""The two drivers of the one pump: blocking (``poll``) and asyncio (``add_reader``/``add_writer``).

A driver runs the pump, waits for what it asks, and turns "no readiness within ``timeout``"
(an idle timeout) or "not done by ``deadline``" (a ``time.monotonic()`` instant: the whole run's
bound) into a ``TimeoutError`` thrown back into the pump, which adds the count sent and cleans up.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from .pump import Checkpoint, Event, Pull, Request, Wait

T = TypeVar("T")

_POLL_EVENTS = {Event.READ: select.POLLIN, Event.WRITE: select.POLLOUT}


def run_blocking(
    pump: Generator[Request, Any, T], timeout: float | None, *, deadline: float | None = None
) -> T:
    """Run ``pump`` (or any step of its kind) to the end on this thread; its result."""
    try:
        request = next(pump)
        while True:
            if isinstance(request, Pull):
                request = pump.throw(TypeError("an async iterable needs atransfer()"))
                continue
            wait = _wait_time(timeout, deadline)
            if isinstance(request, Checkpoint) or (wait != 0 and _poll(request, wait)):
                request = pump.send(None)
            else:
                request = pump.throw(_timed_out(request, timeout, deadline))
    except StopIteration as done:
        result: T = done.value
        return result
    finally:
        pump.close()


def _poll(wait: Wait, timeout: float | None) -> bool:
    poller = select.poll()
    # Errors and hang-ups are reported whatever is asked: the next call then raises them.
    poller.register(wait.fd, _POLL_EVENTS[wait.event])
    return bool(poller.poll(None if timeout is None else timeout * 1000))


async def run_async(
    pump: Generator[Request, Any, T], timeout: float | None, *, deadline: float | None = None
) -> T:
    """Run ``pump`` (or any step of its kind) on the running loop without blocking it."""
    loop = asyncio.get_running_loop()
    # The loop may not watch an fd a transport owns, so waits are registered on dups.
    dups: dict[int, int] = {}
    try:
        request: Request = next(pump)
        while True:
            if isinstance(request, Pull):
                try:
                    chunk = await _pull(request)
                except Exception as error:  # the pump cleans up and adds the count sent
                    request = pump.throw(error)
                else:
                    request = pump.send(chunk)
                continue
            if isinstance(request, Checkpoint):
                await asyncio.sleep(0)
                request = pump.send(None)
                continue
            dup = dups.get(request.fd)
            if dup is None:
                dup = dups[request.fd] = os.dup(request.fd)
            wait = _wait_time(timeout, deadline)
            if wait != 0 and await ready_async(loop, dup, request.event, wait):
                request = pump.send(None)
            else:
                request = pump.throw(_timed_out(request, timeout, deadline))
    except StopIteration as done:
        result: T = done.value
        return result
    finally:
        pump.close()  # on cancellation too: the pump releases its pipe and restores modes
        for dup in dups.values():
            os.close(dup)


async def _pull(request: Pull) -> object:
    try:
        return await request.chunks.__anext__()
    except StopAsyncIteration:
        return None


async def ready_async(loop: asyncio.AbstractEventLoop, fd: int, event: Event, timeout: float | None) -> bool:
    """Whether ``fd`` (one the loop may watch: never a transport's own) got ready in time."""
    ready: asyncio.Future[bool] = loop.create_future()

    def settle(value: bool) -> None:
        if not ready.done():
            ready.set_result(value)

    watch: Callable[..., None] = loop.add_reader if event is Event.READ else loop.add_writer
    unwatch: Callable[[int], bool] = loop.remove_reader if event is Event.READ else loop.remove_writer
    watch(fd, settle, True)
    expiry = None if timeout is None else loop.call_later(timeout, settle, False)
    try:
        return await ready
    finally:
        unwatch(fd)
        if expiry is not None:
            expiry.cancel()


def _wait_time(timeout: float | None, deadline: float | None) -> float | None:
    """How long the next wait may take: the idle timeout, cut to what the deadline leaves (0:
    the deadline has passed)."""
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.0)
    return left if timeout is None else min(timeout, left)


def _timed_out(wait: Wait, timeout: float | None, deadline: float | None) -> TimeoutError:
    if deadline is not None and time.monotonic() >= deadline:
        return TimeoutError("not done by its deadline")
    side = "readable" if wait.event is Event.READ else "writable"
    return TimeoutError(f"no progress for {timeout} seconds: fd {wait.fd} did not become {side}")
