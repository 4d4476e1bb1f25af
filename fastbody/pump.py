"""The one transfer loop.

The pump is a generator: it makes non-blocking system calls until it has to wait, then
yields what it waits for (``Wait``: an fd and a direction, or ``Pull``: the next chunk of an
async iterable) and goes on when the driver sends it back. ``drivers.py`` has the blocking
driver (``poll``) and the asyncio one (``add_reader``/``add_writer``). The shape is Go's
``internal/poll``: callers never see EAGAIN, only a count or an error carrying ``sent``.
"""

from __future__ import annotations

import enum
import io
import ssl
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from . import counters, syscalls
from .errors import IncompleteTransfer, with_sent
from .pipes import PipePool
from .plan import Path, Trickle, choose_path
from .source import Body, ChunksBody, FileBody, ReaderBody, StreamBody, StreamKind

COPY_BUFFER = 1 << 20
"""The copy path's buffer: with 1 MiB a userspace copy costs half what 64 KiB chunks do."""

SENDFILE_STEP = 16 << 20
"""Bytes asked of one sendfile call; the socket buffer takes less per call anyway."""


class Event(enum.Enum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Wait:
    """The pump waits until ``fd`` is ready for ``event``."""

    fd: int
    event: Event


@dataclass(frozen=True)
class Pull:
    """The pump wants the next chunk of ``chunks``; the driver sends it back (``None`` at the end)."""

    chunks: AsyncIterator[Any]


Request = Wait | Pull
Pump = Generator[Request, Any, int]
Step = Generator[Request, Any, None]
Attempt = Generator[Request, Any, bool]  # False: the copy path is to move the rest


@dataclass
class Destination:
    """The connected socket the bytes go to."""

    fd: int
    tls: ssl.SSLSocket | None = None

    def write(self, data: memoryview) -> int | Wait:
        if self.tls is None:
            written = syscalls.write(self.fd, data)
            return Wait(self.fd, Event.WRITE) if written is None else written
        return _tls_call(self.tls, self.tls.send, data, Event.WRITE)


class Progress:
    """Bytes sent so far against an optional limit; every byte sent is counted in ``stats``."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.sent = 0

    @property
    def done(self) -> bool:
        return self.limit is not None and self.sent >= self.limit

    def want(self, most: int) -> int:
        """At most ``most`` bytes, and no more than the limit leaves."""
        return most if self.limit is None else min(most, self.limit - self.sent)

    def add(self, path: str, count: int) -> None:
        self.sent += count
        counters.add(path, count)


def pump(dst: Destination, body: Body, count: int | None, pool: PipePool) -> Pump:
    """Send ``body`` to ``dst``: ``count`` bytes exactly, or until the source ends."""
    progress = Progress(count)
    with ExitStack() as cleanup:
        if isinstance(body, FileBody):
            cleanup.callback(_settle_file, body, progress)
        try:
            for fd, tls in ((dst.fd, dst.tls), _stream_fd(body)):
                if fd is not None:
                    cleanup.enter_context(_nonblocking(fd, tls))
            yield from _move(dst, body, progress, pool)
        except OSError as error:
            raise with_sent(error, progress.sent) from error
    if count is not None and progress.sent < count:
        raise IncompleteTransfer.short(progress.sent, count)
    return progress.sent


def _move(dst: Destination, body: Body, progress: Progress, pool: PipePool) -> Step:
    path = choose_path(body, progress.limit, tls=dst.tls is not None)
    if isinstance(body, FileBody):
        if path is Path.SENDFILE and (yield from _sendfile(dst, body, progress)):
            return
        yield from _copy(dst, _FdReader(body.fd, body.offset), progress)
    elif isinstance(body, StreamBody):
        if body.buffered is not None:
            yield from _send_buffered(dst, body.buffered, progress)
        if path is Path.SPLICE_POOLED and (yield from _splice_through_pipe(dst, body.fd, progress, pool)):
            return
        if path is Path.SPLICE_DIRECT and (yield from _splice_direct(dst, body.fd, progress)):
            return
        reader: _Reader = _TlsReader(body.tls) if body.tls is not None else _FdReader(body.fd, None)
        yield from _copy(dst, reader, progress)
    elif isinstance(body, ReaderBody):
        yield from _copy(dst, _ObjectReader(body.reader), progress)
    else:
        yield from _copy_chunks(dst, body, progress)


# -- kernel paths ---------------------------------------------------------------------------


def _sendfile(dst: Destination, body: FileBody, progress: Progress) -> Attempt:
    offset = body.offset
    while not progress.done:
        try:
            sent = syscalls.sendfile(dst.fd, body.fd, offset, progress.want(SENDFILE_STEP))
        except OSError as error:
            if offset == body.offset and error.errno in syscalls.CANNOT_START:
                return False
            raise
        if sent is None:
            yield Wait(dst.fd, Event.WRITE)
        elif sent == 0:  # end of file (or the file shrank under us)
            break
        else:
            offset += sent
            progress.add(counters.SENDFILE, sent)
    return True


def _splice_through_pipe(dst: Destination, src: int, progress: Progress, pool: PipePool) -> Attempt:
    pipe = pool.acquire()
    if pipe is None:  # pool exhausted or only small pipes to be had: copying is cheaper
        return False
    empty = True
    started = False
    trickle = Trickle()
    try:
        while not progress.done:
            # Fill the empty pipe, then drain it completely: so EAGAIN on the fill means
            # "source not readable" and 0 means EOF, never "pipe full".
            try:
                filled = syscalls.splice(src, pipe.write_fd, progress.want(pipe.size))
            except OSError as error:
                if not started and error.errno in syscalls.CANNOT_START:
                    return False
                raise
            if filled is None:
                yield Wait(src, Event.READ)
                continue
            if filled == 0:
                break
            started = True
            empty = False
            pending = filled
            while pending:
                drained = syscalls.splice(pipe.read_fd, dst.fd, pending)
                if drained is None:
                    yield Wait(dst.fd, Event.WRITE)
                    continue
                pending -= drained
                progress.add(counters.SPLICE, drained)
            empty = True
            if trickle.seen(filled):  # the pipe is empty again: the copy path takes over from here
                return False
        return True
    finally:
        pool.release(pipe, empty=empty)


def _splice_direct(dst: Destination, src: int, progress: Progress) -> Attempt:
    started = False
    while not progress.done:
        try:
            moved = syscalls.splice(src, dst.fd, progress.want(syscalls.MAX_STEP))
        except OSError as error:
            if not started and error.errno in syscalls.CANNOT_START:
                return False
            raise
        if moved is None:
            # EAGAIN from either side: a readable pipe means the socket is the one that is full.
            yield Wait(dst.fd, Event.WRITE) if syscalls.readable_now(src) else Wait(src, Event.READ)
        elif moved == 0:
            break
        else:
            started = True
            progress.add(counters.SPLICE, moved)
    return True


# -- copy path ------------------------------------------------------------------------------


class _Reader:
    def read_into(self, buffer: memoryview) -> int | Wait:
        raise NotImplementedError


class _FdReader(_Reader):
    """Reads a socket, pipe or device fd; a file at an explicit offset that it advances."""

    def __init__(self, fd: int, offset: int | None) -> None:
        self.fd = fd
        self.offset = offset

    def read_into(self, buffer: memoryview) -> int | Wait:
        got = syscalls.read_into(self.fd, buffer, self.offset)
        if got is None:
            return Wait(self.fd, Event.READ)
        if self.offset is not None:
            self.offset += got
        return got


class _TlsReader(_Reader):
    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock

    def read_into(self, buffer: memoryview) -> int | Wait:
        return _tls_call(self.sock, self.sock.recv_into, buffer, Event.READ)


class _ObjectReader(_Reader):
    """A file-like object without an fd: it never makes us wait."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def read_into(self, buffer: memoryview) -> int | Wait:
        if hasattr(self.reader, "readinto"):
            got = self.reader.readinto(buffer)
        else:
            data = self.reader.read(len(buffer))
            got = len(data)
            buffer[:got] = data
        if got is None:
            raise BlockingIOError(f"{self.reader!r} would block and has no fd to wait on")
        return int(got)


def _copy(dst: Destination, reader: _Reader, progress: Progress) -> Step:
    buffer = memoryview(bytearray(max(progress.want(COPY_BUFFER), 1)))
    while not progress.done:
        got = reader.read_into(buffer[: progress.want(len(buffer))])
        if isinstance(got, Wait):
            yield got
            continue
        if got == 0:
            return
        yield from _write_all(dst, buffer[:got], progress)


def _copy_chunks(dst: Destination, body: ChunksBody, progress: Progress) -> Step:
    while not progress.done:
        if body.is_async:
            assert not isinstance(body.chunks, Iterator)
            chunk = yield Pull(body.chunks)
        else:
            assert isinstance(body.chunks, Iterator)
            chunk = next(body.chunks, None)
        if chunk is None:
            return
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"body chunks must be bytes-like, got {type(chunk).__name__!r}")
        data = memoryview(chunk).cast("B")
        yield from _write_all(dst, data[: progress.want(len(data))], progress)


def _send_buffered(dst: Destination, reader: io.BufferedReader, progress: Progress) -> Step:
    """Send what ``reader`` already holds in its buffer (the fd is non-blocking by now)."""
    try:
        # peek() answers from the buffer, or does one non-blocking read when it is empty.
        held = len(reader.peek(1))
    except BlockingIOError:
        return
    if held:
        yield from _write_all(dst, memoryview(reader.read(progress.want(held))), progress)


def _write_all(dst: Destination, data: memoryview, progress: Progress) -> Step:
    while data:
        written = dst.write(data)
        if isinstance(written, Wait):
            yield written
            continue
        progress.add(counters.COPY, written)
        data = data[written:]


# -- set-up and tear-down -------------------------------------------------------------------


def _stream_fd(body: Body) -> tuple[int | None, ssl.SSLSocket | None]:
    if isinstance(body, StreamBody):
        return body.fd, body.tls
    return None, None


@contextmanager
def _nonblocking(fd: int, tls: ssl.SSLSocket | None) -> Iterator[None]:
    if tls is None:
        with syscalls.nonblocking(fd):
            yield
        return
    # An SSL socket keeps its own timeout: 0 makes its calls non-blocking; put it back after.
    timeout = tls.gettimeout()
    tls.setblocking(False)
    try:
        yield
    finally:
        tls.settimeout(timeout)


def _settle_file(body: FileBody, progress: Progress) -> None:
    if body.file is not None:  # leave the position just after the last byte sent, as a read would
        body.file.seek(body.offset + progress.sent)
    if body.owned is not None:
        body.owned.close()


def _tls_call(sock: ssl.SSLSocket, call: Any, data: memoryview, blocked: Event) -> int | Wait:
    # TLS may need to read to write (and the reverse): wait for what the library asks for.
    try:
        return int(call(data))
    except ssl.SSLWantReadError:
        return Wait(sock.fileno(), Event.READ)
    except ssl.SSLWantWriteError:
        return Wait(sock.fileno(), Event.WRITE)
    except BlockingIOError:
        return Wait(sock.fileno(), blocked)


__all__ = ["Destination", "Event", "Pull", "Pump", "Request", "StreamKind", "Wait", "pump"]
