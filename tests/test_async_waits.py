"""How the asyncio driver waits: one registration per fd and event for as long as a run keeps
waiting for it, nothing watched once the run ends (or while it pulls a chunk), and one idle
timer that still times each wait from its own start."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import pytest
from conftest import fd_count, run_async

from fastbody import drivers
from fastbody.pump import Checkpoint, Event, Pull, Request, Wait

LOOPS = ["asyncio", "uvloop"]
WAITS = 200


class Counted:
    """Counts ``add_reader``/``add_writer`` on a loop and the calls of the callbacks given."""

    def __init__(self) -> None:
        self.added = 0
        self.fired = 0

    def on(self, loop: asyncio.AbstractEventLoop) -> None:
        for name in ("add_reader", "add_writer"):
            setattr(loop, name, self._counting(getattr(loop, name)))

    def _counting(self, add: Callable[..., None]) -> Callable[..., None]:
        def counted(fd: int, callback: Callable[..., None], *args: Any) -> None:
            self.added += 1

            def fire(*args: Any) -> None:
                self.fired += 1
                callback(*args)

            add(fd, fire, *args)

        return counted


def writable_pair() -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    return ours, peer


def waits_for(fd: int, count: int, event: Event = Event.WRITE) -> Generator[Request, Any, int]:
    for _ in range(count):
        yield Wait(fd, event)
    return count


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_one_registration_for_many_waits_on_one_fd(loop_kind: str) -> None:
    counted = Counted()
    ours, peer = writable_pair()

    async def main() -> int:
        counted.on(asyncio.get_running_loop())
        return await drivers.run_async(waits_for(ours.fileno(), WAITS), timeout=5)

    assert run_async(main(), loop_kind) == WAITS
    assert counted.added == 1  # not one per wait
    ours.close()
    peer.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("ending", ["returns", "raises", "cancelled", "times out"])
def test_nothing_watched_once_the_run_ends(loop_kind: str, ending: str) -> None:
    """However the run ends, its dup is closed and nothing it watched calls back afterwards,
    though the socket stays writable and the loop goes on."""
    counted = Counted()
    ours, peer = writable_pair()
    stalled, stalled_peer = (
        socket.socketpair()
    )  # never readable: the run waits here when it is to end waiting
    stalled.setblocking(False)

    def pump() -> Generator[Request, Any, int]:
        yield from waits_for(ours.fileno(), 20)
        if ending == "raises":
            raise RuntimeError("the pump failed")
        if ending in ("cancelled", "times out"):
            yield Wait(stalled.fileno(), Event.READ)
        return 20

    async def main() -> int:
        counted.on(asyncio.get_running_loop())
        before = fd_count()
        run = asyncio.ensure_future(drivers.run_async(pump(), timeout=0.2 if ending == "times out" else 5))
        if ending == "cancelled":
            await asyncio.sleep(0.1)
            run.cancel()
        failure = (RuntimeError, asyncio.CancelledError, TimeoutError)
        with contextlib.nullcontext() if ending == "returns" else pytest.raises(failure):
            await run
        fired = counted.fired
        for _ in range(20):  # passes of the loop while `ours` is writable
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert counted.fired == fired, "a registration outlived its run"
        assert fd_count() == before, "a dup outlived its run"
        return fired

    assert run_async(main(), loop_kind) >= 20
    for sock in (ours, peer, stalled, stalled_peer):
        sock.close()


async def slow_chunks() -> AsyncIterator[bytes]:
    await asyncio.sleep(0.2)
    yield b"x"


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("meanwhile", ["pull", "wait for another fd"])
def test_no_busy_loop_on_a_writable_socket_between_its_waits(loop_kind: str, meanwhile: str) -> None:
    """A writable socket still watched from its last wait would wake the loop on every pass
    while the run pulls a chunk or waits for something else: it is no longer watched then."""
    counted = Counted()
    ours, peer = writable_pair()
    other, other_peer = socket.socketpair()
    other.setblocking(False)

    def pump() -> Generator[Request, Any, int]:
        yield from waits_for(ours.fileno(), 3)
        if meanwhile == "pull":
            assert (yield Pull(slow_chunks())) == b"x"
        else:
            yield Wait(other.fileno(), Event.READ)  # readable in 0.2 s
        yield from waits_for(ours.fileno(), 3)
        return 6

    async def main() -> int:
        loop = asyncio.get_running_loop()
        counted.on(loop)
        loop.call_later(0.2, other_peer.send, b"!")
        return await drivers.run_async(pump(), timeout=5)

    assert run_async(main(), loop_kind) == 6
    assert counted.fired < 20, f"{counted.fired} wake-ups for 7 waits: the loop spun"
    for sock in (ours, peer, other, other_peer):
        sock.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_wait_is_woken_only_by_readiness_after_it_began(loop_kind: str) -> None:
    """The registration outlives each wait, so the readiness of the byte one step read must not
    wake the next wait (asyncio queues a select's callbacks behind the task step that reads)."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)

    def pump() -> Generator[Request, Any, int]:
        for _ in range(30):
            asyncio.get_running_loop().call_later(0.002, peer.send, b"x")
            yield Wait(ours.fileno(), Event.READ)
            assert ours.recv(1) == b"x"  # woken, so readable: a spurious wake-up reads nothing
        return 30

    assert run_async(drivers.run_async(pump(), timeout=5), loop_kind) == 30
    ours.close()
    peer.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_idle_timeout_counts_from_the_stalled_wait(loop_kind: str) -> None:
    """One timer serves every wait: waits that each got ready within the timeout, for longer
    than the timeout in all, do not cut the one that stalls short; that one times out after
    the timeout, counted from its own start."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    stalled, stalled_peer = socket.socketpair()
    stalled.setblocking(False)
    timeout = 0.3
    marks: dict[str, float] = {}

    def pump() -> Generator[Request, Any, int]:
        started = time.monotonic()
        while time.monotonic() - started < 3 * timeout:  # each wait ready after timeout / 6
            asyncio.get_running_loop().call_later(timeout / 6, peer.send, b"x")
            yield Wait(ours.fileno(), Event.READ)
            assert ours.recv(1) == b"x"
            yield Checkpoint.DUE
        marks["stalled"] = time.monotonic()
        try:
            yield Wait(stalled.fileno(), Event.READ)
        except TimeoutError:
            marks["timed out"] = time.monotonic()
            raise
        return 0

    with pytest.raises(TimeoutError, match=r"no progress for 0\.3 seconds"):
        run_async(drivers.run_async(pump(), timeout=timeout), loop_kind)
    assert "stalled" in marks, "a wait that got ready in time timed out"
    waited = marks["timed out"] - marks["stalled"]
    assert timeout - 0.02 <= waited < timeout + 0.5, waited
    for sock in (ours, peer, stalled, stalled_peer):
        sock.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_deadline_cuts_the_idle_timeout(loop_kind: str) -> None:
    ours, peer = writable_pair()
    stalled, stalled_peer = socket.socketpair()
    stalled.setblocking(False)

    def pump() -> Generator[Request, Any, int]:
        yield from waits_for(ours.fileno(), 5)
        yield Wait(stalled.fileno(), Event.READ)
        return 0

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="deadline"):
        run_async(drivers.run_async(pump(), timeout=5, deadline=started + 0.3), loop_kind)
    assert time.monotonic() - started < 2
    for sock in (ours, peer, stalled, stalled_peer):
        sock.close()


def test_dups_are_what_the_loop_watches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fd a transport owns is never handed to the loop; its dup is, once."""
    watched: list[int] = []
    ours, peer = writable_pair()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        add_writer = loop.add_writer

        def recording(fd: int, *args: Any) -> None:
            watched.append(fd)
            add_writer(fd, *args)

        monkeypatch.setattr(loop, "add_writer", recording)
        return await drivers.run_async(waits_for(ours.fileno(), 10), timeout=None)

    assert run_async(main(), "asyncio") == 10
    assert len(watched) == 1 and watched[0] != ours.fileno()
    ours.close()
    peer.close()
