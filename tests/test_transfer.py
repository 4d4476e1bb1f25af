"""transfer() and atransfer() on real sockets, files, pipes and subprocesses.

Every test runs three ways (blocking, asyncio, uvloop), checks the bytes by hash and checks
which path moved them in ``fastbody.stats()``.
"""

from __future__ import annotations

import fcntl
import io
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import pytest
from conftest import Receiver, Runner, StatsDelta, close_fed, feed_socket, sha256, tcp_pair

import fastbody
from fastbody import pipes
from fastbody.plan import SMALL_BODY

MiB = 1 << 20


def send(run: Runner, source: object, **options: object) -> tuple[int, int, str]:
    """Transfer ``source`` to a fresh client; (returned count, bytes received, their hash)."""
    server, client = tcp_pair()
    receiver = Receiver(client)
    try:
        sent = run(server, source, **options)
    finally:
        server.close()
    received, digest = receiver.result()
    client.close()
    return sent, received, digest


def cat(path: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["cat", path], stdout=subprocess.PIPE)


# -- small bodies go by copy ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["path", "bytes", "socket"])
def test_small_body_is_copied(
    run: Runner, moved: StatsDelta, make_file: Callable[[bytes], str], kind: str
) -> None:
    data = os.urandom(1000)
    source = {"path": lambda: make_file(data), "bytes": lambda: data, "socket": lambda: feed_socket(data)}[
        kind
    ]()
    count = len(data) if kind == "socket" else None
    assert send(run, source, count=count) == (1000, 1000, sha256(data))
    assert moved() == {"copy": 1000}


def test_several_writes_arrive_as_one_body(run: Runner, moved: StatsDelta) -> None:
    pieces = [os.urandom(random.randint(1, 64 << 10)) for _ in range(200)]
    source, writer = tcp_pair()

    def write_slowly() -> None:
        for index, piece in enumerate(pieces):
            writer.sendall(piece)
            if index % 20 == 0:
                time.sleep(0.01)  # make the pump wait for the source now and then
        writer.close()

    threading.Thread(target=write_slowly).start()
    body = b"".join(pieces)
    assert send(run, source) == (len(body), len(body), sha256(body))
    source.close()
    # Mostly spliced; should the pieces come in small for a while, the copy path takes the rest.
    assert moved().get("splice", 0) > 0 and sum(moved().values()) == len(body)


def test_trickling_socket_source_switches_to_copy(run: Runner, moved: StatsDelta) -> None:
    body = os.urandom(MiB)
    source, writer = tcp_pair()
    writer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def trickle() -> None:  # 1 KiB now and then, as from a slow upstream
        for start in range(0, len(body), 1024):
            writer.sendall(body[start : start + 1024])
            time.sleep(0.0005)
        writer.close()

    threading.Thread(target=trickle).start()
    assert send(run, source) == (len(body), len(body), sha256(body))
    source.close()
    assert moved()["copy"] > len(body) // 2 and sum(moved().values()) == len(body)


# -- big bodies by each kernel path -----------------------------------------------------------


def test_big_file_by_sendfile(
    run: Runner, moved: StatsDelta, blob_32m: bytes, make_file: Callable[[bytes], str]
) -> None:
    with open(make_file(blob_32m), "rb") as file:
        assert send(run, file) == (len(blob_32m), len(blob_32m), sha256(blob_32m))
    assert moved() == {"sendfile": len(blob_32m)}


def test_big_socket_body_by_splice(run: Runner, moved: StatsDelta, blob_32m: bytes) -> None:
    source = feed_socket(blob_32m)
    assert send(run, source) == (len(blob_32m), len(blob_32m), sha256(blob_32m))
    source.close()
    assert moved() == {"splice": len(blob_32m)}


def test_subprocess_pipe_by_splice(
    run: Runner, moved: StatsDelta, blob_32m: bytes, make_file: Callable[[bytes], str]
) -> None:
    process = cat(make_file(blob_32m))
    assert process.stdout is not None
    assert send(run, process.stdout) == (len(blob_32m), len(blob_32m), sha256(blob_32m))
    assert process.wait(10) == 0
    # The 64 KiB pipe was grown so each splice moves up to the pool's pipe size.
    assert fcntl.fcntl(process.stdout.fileno(), fcntl.F_GETPIPE_SZ) >= pipes.MIN_PIPE_SIZE
    process.stdout.close()
    # At most one buffer's worth was already read into Python by the file object: it is copied.
    spliced = moved().get("splice", 0)
    assert spliced >= len(blob_32m) - io.DEFAULT_BUFFER_SIZE
    assert spliced + moved().get("copy", 0) == len(blob_32m)


def test_unix_socket_source_by_splice(run: Runner, moved: StatsDelta, blob_32m: bytes) -> None:
    source, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def write() -> None:
        writer.sendall(blob_32m)
        writer.close()

    threading.Thread(target=write).start()
    assert send(run, source) == (len(blob_32m), len(blob_32m), sha256(blob_32m))
    source.close()
    assert moved() == {"splice": len(blob_32m)}


@pytest.mark.slow
def test_two_gib_file_by_sendfile(run: Runner, moved: StatsDelta, tmp_path: object) -> None:
    size = 2 * 1024 * MiB - 1
    block = os.urandom(MiB)
    path = os.path.join(str(tmp_path), "2g.bin")
    import hashlib

    digest = hashlib.sha256()
    with open(path, "wb") as file:
        left = size
        while left:
            piece = block[: min(left, MiB)]
            file.write(piece)
            digest.update(piece)
            left -= len(piece)
    assert send(run, path) == (size, size, digest.hexdigest())
    assert moved() == {"sendfile": size}


# -- count and offset -------------------------------------------------------------------------


def test_count_stops_exactly_and_leaves_the_rest_in_the_socket(run: Runner, moved: StatsDelta) -> None:
    body, rest = os.urandom(3 * MiB), os.urandom(100_000)
    source = feed_socket(body + rest)
    assert send(run, source, count=len(body)) == (len(body), len(body), sha256(body))
    assert moved() == {"splice": len(body)}
    source.setblocking(True)
    left = b""
    while chunk := source.recv(MiB):
        left += chunk
    assert left == rest
    source.close()


@pytest.mark.parametrize("kind", ["file", "socket", "pipe"])
def test_count_beyond_the_source_raises_with_sent(
    run: Runner, moved: StatsDelta, make_file: Callable[[bytes], str], kind: str
) -> None:
    data = os.urandom(2 * MiB)
    path = make_file(data)
    process = cat(path) if kind == "pipe" else None
    source = {"file": lambda: path, "socket": lambda: feed_socket(data), "pipe": lambda: process.stdout}[
        kind
    ]()
    server, client = tcp_pair()
    receiver = Receiver(client)
    with pytest.raises(fastbody.IncompleteTransfer) as raised:
        run(server, source, count=len(data) + 10)
    server.close()
    assert raised.value.sent == len(data) and raised.value.expected == len(data) + 10
    assert isinstance(raised.value, OSError)
    assert receiver.result() == (len(data), sha256(data))
    assert sum(moved().values()) == len(data)
    client.close()
    if process is not None:
        process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["file", "socket", "pipe", "iterator"])
def test_source_at_eof_sends_nothing(
    run: Runner, moved: StatsDelta, make_file: Callable[[bytes], str], kind: str
) -> None:
    if kind == "file":
        source: object = open(make_file(b"abc"), "rb")
        source.read()  # type: ignore[attr-defined]
    elif kind == "socket":
        source = feed_socket(b"")
    elif kind == "pipe":
        read_fd, write_fd = os.pipe()
        os.close(write_fd)
        source = open(read_fd, "rb", buffering=0)
    else:
        source = iter([])
    assert send(run, source) == (0, 0, sha256(b""))
    assert moved() == {}
    if hasattr(source, "close"):
        source.close()


def test_file_offset_none_moves_the_position(
    run: Runner, blob_32m: bytes, make_file: Callable[[bytes], str]
) -> None:
    with open(make_file(blob_32m), "rb") as file:
        file.read(1000)  # a buffered read: the position counts what the caller took, not the buffer
        assert send(run, file, count=5 * MiB) == (5 * MiB, 5 * MiB, sha256(blob_32m[1000 : 1000 + 5 * MiB]))
        assert file.tell() == 1000 + 5 * MiB
        assert file.read(10) == blob_32m[1000 + 5 * MiB : 1000 + 5 * MiB + 10]


def test_file_offset_given_leaves_the_position(
    run: Runner, blob_32m: bytes, make_file: Callable[[bytes], str]
) -> None:
    with open(make_file(blob_32m), "rb") as file:
        file.seek(77)
        start = 3 * MiB + 5
        assert send(run, file, offset=start) == (len(blob_32m) - start,) * 2 + (sha256(blob_32m[start:]),)
        assert file.tell() == 77


# -- copy-path sources ------------------------------------------------------------------------


def test_file_like_without_fd_is_copied(run: Runner, moved: StatsDelta, blob_32m: bytes) -> None:
    assert send(run, io.BytesIO(blob_32m)) == (len(blob_32m), len(blob_32m), sha256(blob_32m))
    assert moved() == {"copy": len(blob_32m)}


def test_iterator_is_copied(run: Runner, moved: StatsDelta) -> None:
    chunks = [os.urandom(n) for n in (1, 0, 70_000, 5, 300_000)]

    def generate() -> Iterator[bytes]:
        yield from chunks

    body = b"".join(chunks)
    assert send(run, generate()) == (len(body), len(body), sha256(body))
    assert moved() == {"copy": len(body)}


def test_async_iterator_is_copied(run: Runner, moved: StatsDelta) -> None:
    chunks = [os.urandom(n) for n in (10, 200_000, 3)]

    async def generate() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    if run.kind == "blocking":  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="atransfer"):
            send(run, generate())
        return
    body = b"".join(chunks)
    assert send(run, generate()) == (len(body), len(body), sha256(body))
    assert moved() == {"copy": len(body)}


# -- faults -----------------------------------------------------------------------------------


def open_fds() -> set[str]:
    """This process's open fds, less the idle pipes the pool keeps on purpose."""
    from fastbody.pipes import default_pool

    assert default_pool.in_use() == 0
    default_pool.clear()
    return set(os.listdir("/proc/self/fd"))


@contextmanager
def big_source(kind: str, data: bytes, path: str) -> Iterator[object]:
    """A source of ``data`` for each path; on exit it is closed and its writer gone."""
    process = cat(path) if kind == "pipe" else None
    source = {
        "file": lambda: path,
        "socket": lambda: feed_socket(data),
        "pipe": lambda: process.stdout,  # type: ignore[union-attr]
        "copy": lambda: io.BytesIO(data),
    }[kind]()
    try:
        yield source
    finally:
        if process is not None:
            process.kill()
            process.wait(10)
            process.stdout.close()  # type: ignore[union-attr]
        if isinstance(source, socket.socket):
            close_fed(source)


@pytest.mark.parametrize("kind", ["file", "socket", "pipe", "copy"])
def test_peer_closing_mid_transfer_raises_and_leaks_nothing(
    run: Runner, blob_32m: bytes, make_file: Callable[[bytes], str], kind: str
) -> None:
    path = make_file(blob_32m)
    before = open_fds()
    with big_source(kind, blob_32m, path) as source:
        server, client = tcp_pair()
        receiver = Receiver(client, close_after=MiB)
        with pytest.raises(fastbody.PeerClosedError) as raised:
            run(server, source)
        assert MiB <= raised.value.sent < len(blob_32m)
        assert isinstance(raised.value, fastbody.TransferError) and isinstance(raised.value, ConnectionError)
        receiver.result()
        server.close()
    assert open_fds() == before


@pytest.mark.parametrize("kind", ["file", "socket", "pipe", "copy"])
def test_reader_that_stops_reading_times_out(
    run: Runner, blob_32m: bytes, make_file: Callable[[bytes], str], kind: str
) -> None:
    path = make_file(blob_32m)
    before = open_fds()
    with big_source(kind, blob_32m, path) as source:
        server, client = tcp_pair()
        receiver = Receiver(client, stop_after=MiB)
        started = time.monotonic()
        with pytest.raises(fastbody.TransferTimeout) as raised:
            run(server, source, timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 10
        assert raised.value.sent >= MiB and isinstance(raised.value, TimeoutError)
        server.close()
        client.close()
        receiver.thread.join(10)
    assert open_fds() == before


def test_pool_exhaustion_falls_back_to_copy(
    run: Runner, moved: StatsDelta, blob_32m: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastbody.pipes import default_pool

    monkeypatch.setattr(default_pool, "max_pipes", 2)
    held = [default_pool.acquire(), default_pool.acquire()]
    assert None not in held and default_pool.acquire() is None
    try:
        source = feed_socket(blob_32m)
        assert send(run, source) == (len(blob_32m), len(blob_32m), sha256(blob_32m))
        source.close()
        assert moved() == {"copy": len(blob_32m)}
    finally:
        for pipe in held:
            default_pool.release(pipe, empty=True)  # type: ignore[arg-type]


def test_blocking_modes_are_restored(run: Runner, blob_32m: bytes, make_file: Callable[[bytes], str]) -> None:
    process = cat(make_file(blob_32m))
    assert process.stdout is not None
    server, client = tcp_pair()
    timeout = server.gettimeout() if run.kind == "blocking" else 0.0  # type: ignore[attr-defined]
    receiver = Receiver(client)
    run(server, process.stdout)
    assert server.gettimeout() == timeout
    assert os.get_blocking(server.fileno()) == (timeout is None)
    assert os.get_blocking(process.stdout.fileno())
    server.close()
    receiver.result()
    client.close()
    process.wait(10)
    process.stdout.close()


# -- argument errors --------------------------------------------------------------------------


@pytest.mark.parametrize("source", [42, object(), 3.5])
def test_unsupported_source_is_a_type_error_naming_it(source: object) -> None:
    server, client = tcp_pair()
    with pytest.raises(TypeError, match=type(source).__name__):
        fastbody.transfer(server, source)
    server.close()
    client.close()


def test_bad_arguments(make_file: Callable[[bytes], str]) -> None:
    server, client = tcp_pair()
    with pytest.raises(ValueError, match="offset"):
        fastbody.transfer(server, b"abc", offset=1)
    with pytest.raises(ValueError, match="count"):
        fastbody.transfer(server, b"abc", count=-1)
    with pytest.raises(TypeError, match="binary mode"), open(make_file(b"x"), encoding="ascii") as text:
        fastbody.transfer(server, text)
    with pytest.raises(ValueError, match="non-blocking"):
        run_coroutine(fastbody.atransfer(server, b"abc"))
    with open(make_file(b"x"), "rb") as not_a_socket, pytest.raises(TypeError, match="socket"):
        fastbody.transfer(not_a_socket, b"abc")  # type: ignore[arg-type]
    server.close()
    client.close()


def run_coroutine(coroutine: object) -> object:
    import asyncio

    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_small_body_threshold_is_at_least_4k() -> None:
    assert SMALL_BODY >= 4096


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))


@pytest.mark.parametrize("kind", ["socket", "pipe"])
def test_stalled_source_times_out(run: Runner, kind: str) -> None:
    """An upstream that stops sending without closing is cut off after ``timeout`` too."""
    head = os.urandom(MiB)
    if kind == "socket":
        source, writer = tcp_pair()
        writer.sendall(head)
    else:
        read_fd, write_fd = os.pipe()
        source = open(read_fd, "rb", buffering=0)
        threading.Thread(target=lambda: os.write(write_fd, head)).start()
    server, client = tcp_pair()
    receiver = Receiver(client)
    started = time.monotonic()
    with pytest.raises(fastbody.TransferTimeout) as raised:
        run(server, source, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 10
    assert raised.value.sent == MiB
    server.close()
    assert receiver.result() == (MiB, sha256(head))
    client.close()
    source.close()
    if kind == "socket":
        writer.close()
    else:
        os.close(write_fd)


def test_socket_options_are_restored(blob_32m: bytes) -> None:
    """Options the owner set (here 7 s on the destination, a blocking socket object whose calls
    the engine uses) and options it did not (the source's) are as they were afterwards."""
    server, client = tcp_pair()  # blocking, no Python timeout: the engine sets the option through it
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 7, 0))
    source = feed_socket(blob_32m)
    options = [(server, socket.SO_SNDTIMEO), (source, socket.SO_RCVTIMEO)]
    before = [sock.getsockopt(socket.SOL_SOCKET, option, 16) for sock, option in options]
    receiver = Receiver(client)
    assert fastbody.transfer(server, source, timeout=3.5) == len(blob_32m)
    assert [sock.getsockopt(socket.SOL_SOCKET, option, 16) for sock, option in options] == before
    server.close()
    receiver.result()
    client.close()
    close_fed(source)


def test_a_non_blocking_fd_under_a_blocking_socket_object_waits_without_spinning(
    make_file: Callable[[bytes], str],
) -> None:
    """A socket object with no Python timeout whose fd was made non-blocking behind its back
    (``os.set_blocking``, ``socket.fromfd``): the kernel waits only if the fd is made blocking,
    so a client that stops reading costs no CPU until the timeout, and the mode is put back."""
    server, client = tcp_pair()
    os.set_blocking(server.fileno(), False)  # behind the object's back: gettimeout() still says None
    path = make_file(os.urandom(32 * MiB))  # more than the socket buffers hold: the client reads nothing
    started, cpu = time.monotonic(), time.process_time()
    with pytest.raises(fastbody.TransferTimeout):
        fastbody.transfer(server, path, timeout=0.5)
    waited, burnt = time.monotonic() - started, time.process_time() - cpu
    assert waited >= 0.5 and burnt < waited / 2, f"{burnt:.2f} s of CPU in {waited:.2f} s: a busy loop"
    assert not os.get_blocking(server.fileno())
    server.close()
    client.close()


def test_pending_at_a_pipe_end_leaks_no_fd() -> None:
    """``fastbody.pending`` on a pipe at its end (the last step of every chunked pipe body)."""
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            assert fastbody.pending(read_fd, 1) == 0
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(read_fd)


def test_hung_up_is_the_peer_gone_not_bytes_waiting() -> None:
    """``readiness.hung_up``: a peer that sent bytes nobody read (a pipelined request) has not
    gone; one that closed or reset has (``failures.blame`` tells an upstream's reset by it)."""
    from fastbody.readiness import hung_up, readable_now

    here, there = socket.socketpair()
    with here, there:
        assert not hung_up(here)
        there.sendall(b"GET /next HTTP/1.1\r\n\r\n")
        assert readable_now(here) and not hung_up(here)
        there.close()
        assert hung_up(here)
