"""Real sockets, files, pipes and processes on 127.0.0.1 for the engine's tests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import fastbody

Runner = Callable[..., int]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (server side, client side) pair of TCP sockets on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = tcp_pair()
    yield server, client
    server.close()
    client.close()


@dataclass
class Receiver:
    """Drains a socket on a thread, hashing what arrives, like a real client would."""

    sock: socket.socket
    stop_after: int | None = None  # stop reading (but keep the connection) after this many bytes
    close_after: int | None = None  # close the connection after this many bytes
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buffer = memoryview(bytearray(1 << 20))
        try:
            while True:
                limit = len(buffer)
                for mark in (self.stop_after, self.close_after):
                    if mark is not None:
                        limit = min(limit, mark - self.received)
                if limit <= 0:
                    if self.close_after is not None:
                        # Unread data makes close() send a reset, as a browser tab closing would.
                        self.sock.close()
                    return
                got = self.sock.recv_into(buffer[:limit])
                if not got:
                    return
                self.digest.update(buffer[:got])
                self.received += got
        except OSError as error:
            self.error = error

    def result(self, timeout: float = 60) -> tuple[int, str]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "receiver still running"
        return self.received, self.digest.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class StatsDelta:
    """What ``fastbody.stats()`` moved by each path since it was made."""

    def __init__(self) -> None:
        self.before = dict(fastbody.stats())

    def __call__(self) -> dict[str, int]:
        now = fastbody.stats()
        return {path: now[path] - self.before[path] for path in now if now[path] != self.before[path]}


@pytest.fixture
def moved() -> StatsDelta:
    return StatsDelta()


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    uvloop = pytest.importorskip("uvloop", reason="uvloop not installed")
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run_async(coroutine: Any, loop_kind: str, timeout: float = 60) -> Any:
    """Run ``coroutine`` on a new asyncio or uvloop loop; a hang fails after ``timeout`` seconds."""
    factory = _uvloop_factory() if loop_kind == "uvloop" else asyncio.new_event_loop
    loop = factory()
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine, timeout))
    finally:
        loop.close()


@pytest.fixture(params=["blocking", "asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """``transfer`` on this thread, or ``atransfer`` on a fresh asyncio or uvloop loop."""
    kind = request.param
    if kind != "blocking":
        # A loop library's first loop opens fds it keeps for the process: open them before a
        # test counts its fds.
        run_async(asyncio.sleep(0), kind)

    def runner(sock: socket.socket, source: object, **options: Any) -> int:
        if kind == "blocking":
            return fastbody.transfer(sock, source, **options)
        sock.setblocking(False)
        return int(run_async(fastbody.atransfer(sock, source, **options), kind))

    runner.kind = kind  # type: ignore[attr-defined]
    return runner


@pytest.fixture(scope="session")
def blob_32m() -> bytes:
    return os.urandom(32 << 20)


@pytest.fixture
def make_file(tmp_path: Any) -> Callable[[bytes], str]:
    def make(data: bytes) -> str:
        path = tmp_path / f"body-{len(data)}.bin"
        path.write_bytes(data)
        return str(path)

    return make


def feed_socket(data: bytes, chunk: int = 1 << 16, close: bool = True) -> socket.socket:
    """A socket whose peer (on a thread) writes ``data`` in ``chunk``-sized pieces, then closes."""
    source, writer = tcp_pair()

    def write() -> None:
        view = memoryview(data)
        try:
            for start in range(0, len(view), chunk):
                writer.sendall(view[start : start + chunk])
        except OSError:
            pass  # the reading side was closed by the test
        finally:
            if close:
                writer.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    _feeders[source] = thread
    return source


_feeders: dict[socket.socket, threading.Thread] = {}


def close_fed(source: socket.socket) -> None:
    """Close a ``feed_socket`` source and wait for its writer to notice and close its end."""
    source.close()
    thread = _feeders.pop(source)
    thread.join(10)
    assert not thread.is_alive()


class ArrivalWatch:
    """When bytes last arrived at a socket that nobody reads: its receive queue (``FIONREAD``)
    polled every 10 ms on a thread. A peer that stops reading still takes a few bytes now and
    then (window probes, buffer autotuning); "no progress for T" is timed from the last."""

    def __init__(self, sock: socket.socket) -> None:
        import fcntl
        import struct
        import termios
        import time

        self._clock = time.monotonic
        self.last = self._clock()
        self._stop = threading.Event()

        def watch() -> None:
            seen = -1
            while not self._stop.wait(0.01):
                try:
                    queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
                except OSError:
                    return
                if queued != seen:
                    seen, self.last = queued, self._clock()

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()

    def idle(self) -> float:
        """Seconds since bytes last arrived."""
        return self._clock() - self.last

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# The fault table: each fault test records a row (what, server, result, holdings before and
# after); the run prints them all at its end, and writes them as Markdown to the file
# FASTBODY_FAULT_TABLE names, if it names one (the closing note's table comes from there).


@dataclass
class FaultRow:
    fault: str
    server: str
    result: str
    before: str
    after: str


_fault_rows: list[FaultRow] = []


class FaultTable:
    def record(self, fault: str, server: str, result: str, before: object, after: object) -> None:
        _fault_rows.append(FaultRow(fault, server, result, str(before), str(after)))


@pytest.fixture(scope="session")
def fault_table() -> FaultTable:
    return FaultTable()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _fault_rows:
        return
    lines = ["| fault | server | result | fds/pipes/RSS MiB before | after |", "|---|---|---|---|---|"]
    lines += [f"| {r.fault} | {r.server} | {r.result} | {r.before} | {r.after} |" for r in _fault_rows]
    terminalreporter.section("fault table")
    for line in lines:
        terminalreporter.write_line(line)
    if path := os.environ.get("FASTBODY_FAULT_TABLE"):
        with open(path, "w") as table:
            table.write("\n".join(lines) + "\n")
