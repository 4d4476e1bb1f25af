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
    watch = _Watch(loop)
    waited = False  # the loop ran other tasks since the last checkpoint (during a wait)
    try:
        request: Request = next(pump)
        while True:
            if isinstance(request, Pull):
                watch.release()  # a writable socket left watched would wake the loop while we pull
                try:
                    chunk = await _pull(request)
                except Exception as error:  # the pump cleans up and adds the count sent
                    request = pump.throw(error)
                else:
                    request = pump.send(chunk)
                continue
            if isinstance(request, Checkpoint):
                # The loop has run other tasks if the pump waited since the last checkpoint:
                # only a run of CHECKPOINT_EVERY bytes without a wait needs to give way.
                if not waited:
                    await asyncio.sleep(0)
                waited = False
                request = pump.send(None)
                continue
            dup = dups.get(request.fd)
            if dup is None:
                dup = dups[request.fd] = os.dup(request.fd)
            wait = _wait_time(timeout, deadline)
            waited = True
            if wait != 0 and await watch.ready(dup, request.event, wait):
                request = pump.send(None)
            else:
                request = pump.throw(_timed_out(request, timeout, deadline))
    except StopIteration as done:
        result: T = done.value
        return result
    finally:
        pump.close()  # on cancellation too: the pump releases its pipe and restores modes
        watch.release()  # before the dups close: the loop never watches a closed (or reused) fd
        for dup in dups.values():
            os.close(dup)


class _Watch:
    """One run's waits on the loop: the registration of the last wait and one idle timer stay
    between waits, so that a pump that waits again and again for the same fd and event (a
    sendfile to a slow reader) costs a future per wait, not a registration and a timer (on
    uvloop a poll handle made and torn down each time: about six epoll_ctl and an ioctl).

    Invariants:

    - At most one fd and event is watched, the last waited for, and only while the run lasts
      (``release`` in the run's ``finally``, before its dups close). Between waits the pump
      runs without awaiting, so a ready fd wakes nobody; the loop passes only at a checkpoint
      (a ready fd then calls ``_fire`` once, for no waiter) and while a chunk is pulled, which
      ``release``s first: a writable socket would call ``_fire`` on every pass of the loop.
      A wait for another fd or event drops the old registration first, for the same reason.
    - A waiter is woken only by readiness seen after it was made. asyncio's own loops queue
      the callbacks of one ``select`` behind the task steps already queued: the readiness of
      the data this step just consumed could wake the next wait, which would then find
      nothing (EAGAIN, or FIONREAD 0 taken for the end). There a waiter is armed by a callback
      queued behind everything already queued, and ``_fire`` ignores it until then. uvloop
      calls them from its poll, where no task step runs: its waiters are armed at once (a
      deferred arming would cost it one more poll per wait).
    - One timer, due at or before the waiter's expiry: the expiries of successive waits only
      grow (the idle timeout, cut to the deadline), so a timer due early is set again for the
      current waiter's, and at most one timer event happens per timeout, not a timer per wait.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watched: tuple[int, Event] | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.armed = False  # readiness may settle ``waiter``
        self.expires = 0.0  # loop time by which ``waiter`` must be ready
        self.timer: asyncio.TimerHandle | None = None
        self.arm_at_once = type(loop).__module__.partition(".")[0] == "uvloop"

    async def ready(self, fd: int, event: Event, timeout: float | None) -> bool:
        """Whether ``fd`` got ready for ``event`` within ``timeout`` seconds."""
        if self.watched != (fd, event):
            self.release()
            if event is Event.READ:
                self.loop.add_reader(fd, self._fire)
            else:
                self.loop.add_writer(fd, self._fire)
            self.watched = (fd, event)
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self.waiter, self.armed = waiter, self.arm_at_once
        if not self.arm_at_once:
            self.loop.call_soon(self._arm, waiter)
        if timeout is not None:
            self.expires = self.loop.time() + timeout
            if self.timer is None:
                self.timer = self.loop.call_at(self.expires, self._expire)
        try:
            return await waiter
        finally:
            self.waiter, self.armed = None, False

    def _arm(self, waiter: asyncio.Future[bool]) -> None:
        if waiter is self.waiter:
            self.armed = True

    def _fire(self) -> None:
        waiter = self.waiter
        if self.armed and waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _expire(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # no wait now: the next one sets a timer
        if self.loop.time() >= self.expires:
            waiter.set_result(False)
        else:
            self.timer = self.loop.call_at(self.expires, self._expire)

    def release(self) -> None:
        """Stop watching and timing (the run ends, or the loop is to pass without a wait)."""
        if self.watched is not None:
            fd, event = self.watched
            self.watched = None
            if event is Event.READ:
                self.loop.remove_reader(fd)
            else:
                self.loop.remove_writer(fd)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


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
