"""Pure decisions: path choice, known length, error mapping, the pipe pool's rules."""

from __future__ import annotations

import errno
import io
import os
import socket

import pytest

from fastbody.errors import PeerClosedError, TransferError, TransferTimeout, with_sent
from fastbody.pipes import PipePool
from fastbody.plan import SMALL_BODY, Path, choose_path, known_length
from fastbody.source import ChunksBody, FileBody, ReaderBody, StreamBody, StreamKind, classify

BIG = 10 * SMALL_BODY


def file_body(size: int, offset: int = 0) -> FileBody:
    return FileBody(fd=99, offset=offset, size=size, file=None, owned=None)


@pytest.mark.parametrize(
    ("body", "count", "tls", "path"),
    [
        (file_body(BIG), None, False, Path.SENDFILE),
        (file_body(BIG), SMALL_BODY - 1, False, Path.COPY),  # a small range of a big file
        (file_body(SMALL_BODY - 1), None, False, Path.COPY),
        (file_body(BIG, offset=BIG - 10), None, False, Path.COPY),  # little left after the offset
        (file_body(BIG), None, True, Path.COPY),  # TLS destination
        (StreamBody(3, StreamKind.SOCKET), None, False, Path.SPLICE_POOLED),  # unknown length
        (StreamBody(3, StreamKind.SOCKET), SMALL_BODY, False, Path.SPLICE_POOLED),
        (StreamBody(3, StreamKind.SOCKET), 100, False, Path.COPY),
        (StreamBody(3, StreamKind.PIPE), None, False, Path.SPLICE_DIRECT),
        (StreamBody(3, StreamKind.PIPE), 100, False, Path.COPY),
        (StreamBody(3, StreamKind.OTHER), None, False, Path.COPY),
        (StreamBody(3, StreamKind.SOCKET, tls=object()), None, False, Path.COPY),  # type: ignore[arg-type]
        (ReaderBody(io.BytesIO()), None, False, Path.COPY),
        (ChunksBody(iter([]), is_async=False, length=BIG), None, False, Path.COPY),
    ],
)
def test_choose_path(body: object, count: int | None, tls: bool, path: Path) -> None:
    assert choose_path(body, count, tls=tls) is path  # type: ignore[arg-type]


def test_known_length() -> None:
    assert known_length(file_body(100, offset=30), None) == 70
    assert known_length(file_body(100, offset=30), 10) == 10
    assert known_length(file_body(100, offset=300), None) == 0
    assert known_length(StreamBody(3, StreamKind.SOCKET), None) is None
    assert known_length(StreamBody(3, StreamKind.SOCKET), 5) == 5


def test_classify_by_what_the_fd_is(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "f")
    with open(path, "wb") as file:
        file.write(b"x" * 10)
    with open(path, "rb") as file:
        file.read(3)
        body = classify(file, None, allow_async=False)
        assert isinstance(body, FileBody) and (body.offset, body.size, body.file) == (3, 10, file)
        assert classify(file, 7, allow_async=False) == FileBody(file.fileno(), 7, 10, file=None, owned=None)
    owned = classify(path, None, allow_async=False)
    assert isinstance(owned, FileBody) and owned.owned is not None
    owned.owned.close()
    a, b = socket.socketpair()
    read_fd, write_fd = os.pipe()
    with a, b, open(read_fd, "rb") as pipe:
        os.close(write_fd)
        assert classify(a, None, allow_async=False) == StreamBody(a.fileno(), StreamKind.SOCKET)
        assert classify(pipe, None, allow_async=False) == StreamBody(read_fd, StreamKind.PIPE, buffered=pipe)
    with open("/dev/zero", "rb", buffering=0) as device:
        assert classify(device, None, allow_async=False).kind is StreamKind.OTHER  # type: ignore[union-attr]
    assert isinstance(classify(io.BytesIO(b"x"), None, allow_async=False), ReaderBody)
    assert classify(b"abc", None, allow_async=False).length == 3
    assert classify(memoryview(b"abcd").cast("B", (2, 2)), None, allow_async=False).length == 4


def test_closed_file_is_refused(tmp_path: os.PathLike[str]) -> None:
    a, b = socket.socketpair()
    a.close()
    b.close()
    with pytest.raises(ValueError, match="closed"):
        classify(a, None, allow_async=False)


def test_errors_carry_sent_and_keep_their_kind() -> None:
    peer = with_sent(BrokenPipeError(errno.EPIPE, "Broken pipe"), 10)
    assert isinstance(peer, PeerClosedError) and isinstance(peer, ConnectionError) and peer.sent == 10
    assert peer.errno == errno.EPIPE
    reset = with_sent(OSError(errno.ECONNRESET, "reset"), 1)
    assert isinstance(reset, PeerClosedError)
    late = with_sent(TimeoutError("no progress"), 5)
    assert isinstance(late, TransferTimeout) and isinstance(late, TimeoutError) and late.sent == 5
    other = with_sent(OSError(errno.EIO, "I/O error"), 7)
    assert type(other) is TransferError and other.errno == errno.EIO and other.sent == 7


def test_pool_reuses_empty_pipes_and_closes_the_rest() -> None:
    pool = PipePool(max_pipes=2, max_idle=1)
    first, second = pool.acquire(), pool.acquire()
    assert first is not None and second is not None and pool.acquire() is None
    assert first.size >= pool.min_size
    pool.release(first, empty=True)
    pool.release(second, empty=True)  # beyond max_idle: closed
    assert pool.idle() == 1 and pool.in_use() == 0
    with pytest.raises(OSError):
        os.fstat(second.read_fd)
    assert pool.acquire() is first
    pool.release(first, empty=False)  # may hold bytes: closed, never reused
    assert pool.idle() == 0
    with pytest.raises(OSError):
        os.fstat(first.read_fd)


def test_pool_refuses_small_pipes() -> None:
    pool = PipePool(size=4096, min_size=1 << 20)  # the kernel gives what is asked: too small
    assert pool.acquire() is None and pool.in_use() == 0


def test_trickle_needs_a_run_of_small_fills() -> None:
    from fastbody.plan import TRICKLE_FILL, TRICKLE_RUN, Trickle

    trickle = Trickle()
    assert not any(trickle.seen(TRICKLE_FILL - 1) for _ in range(TRICKLE_RUN - 1))
    assert not trickle.seen(TRICKLE_FILL)  # one big fill starts the run again
    assert not any(trickle.seen(100) for _ in range(TRICKLE_RUN - 1))
    assert trickle.seen(100)
