"""The one transfer loop.

The pump is a generator: it makes system calls until one answers EAGAIN, then yields what it
waits for (``Wait``: an fd and a direction, or ``Pull``: the next chunk of an async iterable)
and goes on when the driver sends it back. ``drivers.py`` has the blocking driver (``poll``)
and the asyncio one (``add_reader``/``add_writer``); under the blocking driver sockets wait in
the kernel instead (see ``Waits``). The shape is Go's ``internal/poll``: callers never see
EAGAIN, only a count or an error carrying ``sent``.
"""

from __future__ import annotations

import enum
import io
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from . import buffers, counters, pipes, plan, syscalls
from .errors import IncompleteTransfer, with_sent
from .framing import BodyWriter, FramingError
from .pipes import PipePool
from .plan import Path, Trickle, choose_path, known_length
from .source import Body, ChunksBody, FileBody, ReaderBody, StreamBody, StreamKind

SENDFILE_STEP = 16 << 20
"""Bytes asked of one sendfile call; the socket buffer takes less per call anyway."""

RELAY_STEP = 16 << 20
"""Bytes the copy loop moves before it hands back (so counts and ``stats`` stay current)."""

KERNEL_WAIT_SLICE = 0.25
"""Longest wait left to the kernel in one call (``SO_SNDTIMEO``/``SO_RCVTIMEO``) under the
blocking driver. The kernel's timer restarts with every call and a call that moved a few bytes
counts as progress, so "no progress for ``timeout``" is the pump's own deadline, checked after
each slice: a client that stops reading is cut off within a slice of ``timeout``."""

CHUNK_LIMIT = 16 << 20
"""The most one chunk of an unknown-length body covers (what a socket or pipe has ready)."""


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


class Checkpoint(enum.Enum):
    """The pump has moved ``CHECKPOINT_EVERY`` bytes without waiting: the asyncio driver lets
    other tasks run before it goes on (a fast reader never makes the pump wait)."""

    DUE = "due"


CHECKPOINT_EVERY = 16 << 20

Request = Wait | Pull | Checkpoint
Pump = Generator[Request, Any, int]
Step = Generator[Request, Any, None]
Attempt = Generator[Request, Any, bool]  # False: the copy path is to move the rest


@dataclass
class Destination:
    """The connected socket the bytes go to.

    ``pending`` holds framing bytes (a response head, a chunk's size line, the CRLF after a
    chunk) that must go out before the next body byte. They are never counted as body bytes:
    a copy writes them in the same call as the data that follows (``writev``), a kernel path
    sends them first with ``MSG_MORE`` so that they leave in one packet with its first bytes.
    """

    fd: int
    tls: ssl.SSLSocket | None = None
    handle: socket.socket | None = None  # a socket object on ``fd``, for ``send`` with flags
    pending: bytes = b""
    nonblocking: bool = False  # the owner's object says ``fd`` is non-blocking (an asyncio transport's)

    def write(self, data: memoryview) -> int | Wait:
        """Write what the socket takes of ``pending`` and then ``data``: the body bytes written."""
        if self.tls is not None:
            if self.pending:
                return self._after_pending(
                    _tls_call(self.tls, self.tls.send, memoryview(self.pending + data), Event.WRITE)
                )
            return _tls_call(self.tls, self.tls.send, data, Event.WRITE)
        if self.pending:
            return self._after_pending(syscalls.write_parts(self.fd, [self.pending, data]))
        written = syscalls.write(self.fd, data)
        return Wait(self.fd, Event.WRITE) if written is None else written

    def flush(self, *, more: bool) -> Wait | None:
        """Send what is pending on its own (``more``: body bytes follow at once); ``Wait`` if
        the socket takes nothing now, ``None`` once nothing is pending."""
        while self.pending:
            written: int | Wait | None
            if self.tls is not None:
                written = _tls_call(self.tls, self.tls.send, memoryview(self.pending), Event.WRITE)
            elif self.handle is not None:
                written = syscalls.send(self.handle, self.pending, more=more)
            else:
                written = syscalls.write(self.fd, memoryview(self.pending))
            if written is None or isinstance(written, Wait):
                return written or Wait(self.fd, Event.WRITE)
            self.pending = self.pending[written:]
        return None

    def _after_pending(self, written: int | Wait | None) -> int | Wait:
        if written is None or isinstance(written, Wait):
            return written or Wait(self.fd, Event.WRITE)
        framing = min(written, len(self.pending))
        self.pending = self.pending[framing:]
        return written - framing


class Progress:
    """Bytes sent so far against an optional limit; every byte sent is counted in ``stats``, and
    in ``moved`` by path when given (a whole response's tally, which spans its pieces)."""

    def __init__(self, limit: int | None, moved: dict[str, int] | None = None) -> None:
        self.limit = limit
        self.sent = 0
        self.moved = moved
        self.at = time.monotonic()  # when the transfer last moved a byte (read or written)

    @property
    def done(self) -> bool:
        return self.limit is not None and self.sent >= self.limit

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else self.limit - self.sent

    def want(self, most: int) -> int:
        """At most ``most`` bytes, and no more than the limit leaves."""
        return most if self.limit is None else min(most, self.limit - self.sent)

    def add(self, path: str, count: int) -> None:
        self.sent += count
        counters.add(path, count)
        if self.moved is not None:
            self.moved[path] += count
        if count:
            self.at = time.monotonic()

    def touch(self) -> None:
        """Bytes were read (into a pipe): progress, though none was sent yet."""
        self.at = time.monotonic()


class Waits:
    """How one transfer waits.

    With the blocking driver, sockets stay blocking and the kernel does the waiting, bounded
    by ``SO_SNDTIMEO``/``SO_RCVTIMEO``: a blocked relay then costs one call per chunk, as a
    plain ``recv``/``send`` loop does, instead of EAGAIN, poll and the call again. There,
    EAGAIN means the timeout passed. Every other fd is non-blocking and its waits are the
    driver's (``Wait`` requests).
    """

    def __init__(self, timeout: float | None, in_kernel: bool, progress: Progress) -> None:
        self.timeout = timeout
        self.in_kernel = in_kernel
        self.progress = progress
        self.kernel_fds: set[int] = set()
        self.slice = None if timeout is None else min(timeout, KERNEL_WAIT_SLICE)

    def prepare(
        self,
        fd: int,
        tls: ssl.SSLSocket | None,
        timeout_option: int | None,
        handle: socket.socket | None = None,
    ) -> ContextManager[None]:
        """Set ``fd`` up for the transfer; ``timeout_option`` is given for sockets only,
        ``handle`` when the caller's socket object on ``fd`` is known."""
        if tls is not None:
            return syscalls.tls_timeout(tls, self.timeout if self.in_kernel else 0.0)
        if self.in_kernel and timeout_option is not None:
            self.kernel_fds.add(fd)
            return syscalls.kernel_waits(fd, timeout_option, self.slice, handle)
        return syscalls.nonblocking(fd)

    def until(self, fd: int, event: Event) -> Step:
        """Wait until ``fd`` is ready for ``event`` (the caller just got EAGAIN).

        A socket that waits in the kernel has waited one slice already: past the deadline that
        is a timeout, before it the caller simply makes its call again."""
        if fd in self.kernel_fds:
            if self.timeout is not None and time.monotonic() - self.progress.at >= self.timeout:
                raise TimeoutError(f"no progress for {self.timeout} seconds")
            return
        yield Wait(fd, event)

    def timed_out(self, fd: int, since: float) -> bool:
        """Whether an EAGAIN on ``fd`` from a call made at ``since`` was the kernel's timer."""
        if fd not in self.kernel_fds or self.slice is None:
            return False
        return time.monotonic() - since >= self.slice

    def partial(self, fd: int, since: float) -> None:
        """A call on ``fd`` made at ``since`` moved less than asked: if the kernel's timer ended
        it, the last byte moved a whole slice ago, not now."""
        if self.timed_out(fd, since):
            assert self.slice is not None
            self.progress.at = min(self.progress.at, time.monotonic() - self.slice)

    def ahead(self, fd: int) -> bool:
        """Whether to wait before the next read of ``fd`` once a short read emptied it."""
        return fd not in self.kernel_fds


@dataclass
class _Run:
    dst: Destination
    progress: Progress
    waits: Waits
    kernel: bool = True  # False: no sendfile, no splice
    next_checkpoint: int = CHECKPOINT_EVERY

    def checkpoint(self) -> Step:
        """Let the asyncio loop breathe every ``CHECKPOINT_EVERY`` bytes (the blocking driver
        has nothing else to run)."""
        if self.progress.sent >= self.next_checkpoint and not self.waits.in_kernel:
            self.next_checkpoint = self.progress.sent + CHECKPOINT_EVERY
            yield Checkpoint.DUE


def pump(
    dst: Destination,
    body: Body,
    count: int | None,
    pool: PipePool,
    *,
    timeout: float | None,
    in_kernel: bool,
    framing: BodyWriter | None = None,
    last: bool = False,
    kernel: bool = True,
    progress: Progress | None = None,
) -> Pump:
    """Send ``body`` to ``dst``: ``count`` bytes exactly, or until the source ends.

    ``in_kernel``: the blocking driver runs this pump, so sockets may wait in the kernel.
    ``framing``: the body is one piece of an HTTP/1 body framed by that writer (its bytes go
    around the piece's, chunk by chunk when the length is unknown); ``last``: the piece ends
    the body. What is pending in ``dst`` goes out before the first body byte, and at the end.
    ``kernel=False``: every byte is copied (a server's ``--no-sendfile``). ``progress``: where
    to count (so that a caller still knows the count when the pump is closed half-way).
    """
    progress = progress or Progress(count)
    try:
        rest: Body | None = body
        tail = b""  # framing bytes that follow the rest of a piece sent partly at once
        at_once = _at_once(dst, progress, body, framing, last) if framing is not None else None
        if at_once is not None:
            rest, tail = at_once
            framing = None  # the piece, its framing and the body's end are decided
        if rest is not None:  # else the one call sent it all: no set-up, no waits to make
            run = _Run(dst, progress, Waits(timeout, in_kernel, progress), kernel=kernel)
            yield from _the_long_way(run, rest, pool, framing, last, tail)
    except OSError as error:
        raise with_sent(error, progress.sent) from error
    except Exception as error:  # a bad chunk, a failing iterator: the count still matters
        error.sent = progress.sent  # type: ignore[attr-defined]
        raise
    finally:  # after the fds' modes are restored (_the_long_way's own clean-up), however it ends
        if isinstance(body, FileBody):
            _settle_file(body, progress)
    if count is not None and progress.sent < count:
        raise IncompleteTransfer.short(progress.sent, count)
    return progress.sent


def _the_long_way(
    run: _Run, body: Body, pool: PipePool, framing: BodyWriter | None, last: bool, tail: bytes
) -> Step:
    """Move ``body`` with the fds set up for waiting (restored after): its framing around it
    (``framing``: none when it was decided at once), then ``tail`` and what is still pending."""
    dst = run.dst
    with ExitStack() as cleanup:
        body = _set_up(run, body, cleanup, run.waits.in_kernel)
        if framing is None:
            yield from _move(run, body, pool)
        else:
            yield from _framed(run, body, pool, framing)
            if last:
                try:
                    dst.pending += framing.end()
                except FramingError:  # a Content-Length the source did not fill
                    expected = run.progress.sent + (framing.remaining or 0)
                    raise IncompleteTransfer.short(run.progress.sent, expected) from None
        dst.pending += tail
        yield from _flush(run, more=False)


def _set_up(run: _Run, body: Body, cleanup: ExitStack, in_kernel: bool) -> Body:
    """Own dups under asyncio, and each fd in the mode its waits need (restored by ``cleanup``);
    the body to move (a copy on our dup: the caller's description is never changed)."""
    dst = run.dst
    if not in_kernel:
        # Under asyncio the caller's fds may be closed while we wait (a transport that is
        # aborted) and their numbers reused by new connections: work on our own dups.
        if dst.tls is None:
            dst.handle = cleanup.enter_context(syscalls.own_handle(dst.fd))
            dst.fd = dst.handle.fileno()
        if isinstance(body, StreamBody) and body.tls is None:
            body = replace(body, fd=_own_dup(cleanup, body.fd))
    cleanup.enter_context(run.waits.prepare(dst.fd, dst.tls, socket.SO_SNDTIMEO, dst.handle))
    if isinstance(body, StreamBody):
        option = socket.SO_RCVTIMEO if body.kind is StreamKind.SOCKET else None
        cleanup.enter_context(run.waits.prepare(body.fd, body.tls, option))
    return body


def _at_once(
    dst: Destination, progress: Progress, body: Body, framing: BodyWriter, last: bool
) -> tuple[Body | None, bytes] | None:
    """A small piece known whole (a short file, a bytes object) with all its framing in one
    call that never waits (``sendmsg`` with ``MSG_DONTWAIT``, or ``writev`` on an fd its owner
    keeps non-blocking), before any set-up: on a socket with room, which is nearly always, a
    small response then costs that one call (under asyncio: no dup of the transport's fd).
    ``None`` when the piece is not such a one; else what is left to send: the rest of the body
    (``None`` if nothing) and the framing bytes after it."""
    size = known_length(body, progress.limit)
    if dst.tls is not None or size is None or size >= plan.SMALL_BODY:
        return None
    if dst.handle is None and not dst.nonblocking:  # a blocking fd alone: every call may wait
        return None
    if framing.remaining is not None and (size > framing.remaining or (last and size < framing.remaining)):
        return None  # the long way raises what this is
    if isinstance(body, FileBody):
        data: bytes | memoryview = syscalls.pread(body.fd, size, body.offset)
        if len(data) < size:  # the file shrank: the long way says so
            return None
    elif isinstance(body, ChunksBody) and not body.is_async and body.length is not None:
        assert isinstance(body.chunks, Iterator)
        data = next(body.chunks, b"")[:size]
    else:
        return None
    prefix, suffix = framing.piece(size)
    head, tail = dst.pending + prefix, suffix + (framing.end() if last else b"")
    parts = [head, data, tail]
    if dst.handle is not None:
        sent = syscalls.send_parts(dst.handle, parts)
    else:
        sent = syscalls.write_parts(dst.fd, parts) or 0
    moved = min(max(sent - len(head), 0), size)
    progress.add(counters.COPY, moved)
    dst.pending = head[sent:]
    if moved == size and sent - len(head) - size >= len(tail):
        return None, b""
    rest = ChunksBody(iter([memoryview(data)[moved:]]), is_async=False, length=size - moved)
    return rest, tail[max(sent - len(head) - size, 0) :]


def _own_dup(cleanup: ExitStack, fd: int) -> int:
    dup = syscalls.dup(fd)
    cleanup.callback(syscalls.close, dup)
    return dup


def _flush(run: _Run, *, more: bool) -> Step:
    """Send what is pending in the destination (``more``: body bytes follow at once)."""
    while (blocked := run.dst.flush(more=more)) is not None:
        yield from run.waits.until(blocked.fd, blocked.event)


# -- framed bodies ----------------------------------------------------------------------------


def _framed(run: _Run, body: Body, pool: PipePool, framing: BodyWriter) -> Step:
    """One piece of an HTTP/1 body: its framing bytes around it, chunk by chunk when neither
    the source nor the framing knows the length."""
    length = known_length(body, run.progress.limit)
    if length is None:
        length = framing.remaining
    if length is not None:
        yield from _piece(run, body, pool, framing, length)
    elif not framing.chunked:
        yield from _move(run, body, pool)  # delimited by the connection's end
    elif isinstance(body, StreamBody) and body.tls is None and body.kind is not StreamKind.OTHER:
        yield from _ready_chunks(run, body, pool, framing)
    elif isinstance(body, ChunksBody):
        yield from _copy_chunks(run, body, framing)
    else:
        yield from _read_chunks(run, body, framing)


def _piece(run: _Run, body: Body, pool: PipePool, framing: BodyWriter, size: int) -> Step:
    """``size`` bytes of ``body`` with the bytes the framing puts around them."""
    prefix, suffix = framing.piece(size)
    run.dst.pending += prefix
    progress = run.progress
    end = progress.sent + size
    progress.limit = end
    if size:
        yield from _move(run, body, pool)
    if progress.sent < end:  # the source ended inside the piece: never frame a short piece
        raise IncompleteTransfer.short(progress.sent, end)
    run.dst.pending += suffix


def _ready_chunks(run: _Run, body: StreamBody, pool: PipePool, framing: BodyWriter) -> Step:
    """A socket or pipe of unknown length: each chunk is what it has ready when it becomes
    readable (``FIONREAD``), and moves by splice. Bytes a buffered reader already pulled into
    Python (invisible to the kernel) are the first chunk."""
    if body.buffered is not None:
        held = syscalls.buffered_bytes(body.fd, body.buffered)
        if held:
            yield from _piece(run, ChunksBody(iter([held]), is_async=False), pool, framing, len(held))
        body = replace(body, buffered=None)  # the caller's description stays as it was
    src = body.fd
    while True:
        size = syscalls.pending_bytes(src)
        if not size:
            yield Wait(src, Event.READ)  # data, its end, or an error
            size = syscalls.pending_bytes(src)
            if not size:  # readable with nothing to read: the end, or a reset to raise...
                if not syscalls.readable_now(src):
                    continue  # ...unless the wait ended without it being readable: wait again
                if code := syscalls.pending_error(src):
                    raise OSError(code, os.strerror(code))
                return
        yield from _piece(run, body, pool, framing, min(size, CHUNK_LIMIT))
        yield from run.checkpoint()


def _read_chunks(run: _Run, body: Body, framing: BodyWriter) -> Step:
    """A reader, a TLS socket or a device of unknown length: a chunk per read."""
    if isinstance(body, ReaderBody):
        reader: _Reader = _ObjectReader(body.reader)
    elif isinstance(body, StreamBody) and body.tls is not None:
        reader = _TlsReader(body.tls)
    else:  # a device (files always know their length)
        assert isinstance(body, StreamBody)
        reader = _FdReader(body.fd, None)
    with buffers.lent() as buffer:
        while True:
            got = reader.read_into(buffer)
            if isinstance(got, Wait):
                yield from run.waits.until(got.fd, got.event)
                continue
            if not got:
                return
            prefix, suffix = framing.piece(got)
            run.dst.pending += prefix
            yield from _write_all(run, buffer[:got])
            run.dst.pending += suffix
            yield from run.checkpoint()


def _move(run: _Run, body: Body, pool: PipePool) -> Step:
    path = choose_path(body, run.progress.remaining, tls=run.dst.tls is not None or not run.kernel)
    if isinstance(body, FileBody):
        if path is Path.SENDFILE and (yield from _sendfile(run, body)):
            return
        yield from _copy(run, _FdReader(body.fd, body.offset))
    elif isinstance(body, StreamBody):
        if body.buffered is not None:
            yield from _send_buffered(run, body.fd, body.buffered)
        if path is Path.SPLICE_POOLED and (yield from _splice_through_pipe(run, body.fd, pool)):
            return
        if path is Path.SPLICE_DIRECT and (yield from _splice_direct(run, body.fd)):
            return
        reader: _Reader = _TlsReader(body.tls) if body.tls is not None else _FdReader(body.fd, None)
        yield from _copy(run, reader)
    elif isinstance(body, ReaderBody):
        yield from _copy(run, _ObjectReader(body.reader))
    else:
        yield from _copy_chunks(run, body)


# -- kernel paths ---------------------------------------------------------------------------


def _sendfile(run: _Run, body: FileBody) -> Attempt:
    progress, dst, offset = run.progress, run.dst, body.offset
    yield from _flush(run, more=True)  # the head leaves with the file's first bytes
    while not progress.done:
        called, asked = time.monotonic(), progress.want(SENDFILE_STEP)
        try:
            sent = syscalls.sendfile(dst.fd, body.fd, offset, asked)
        except OSError as error:
            if offset == body.offset and error.errno in syscalls.CANNOT_START:
                return False
            raise
        if sent is None:
            yield from run.waits.until(dst.fd, Event.WRITE)
        elif sent == 0:  # end of file (or the file shrank under us)
            break
        else:
            offset += sent
            progress.add(counters.SENDFILE, sent)
            if sent < asked:
                run.waits.partial(dst.fd, called)
                if not progress.done and run.waits.ahead(dst.fd):
                    # The send buffer is full: the next call would only get EAGAIN (and read
                    # page cache into sendfile's pipe for nothing). Sockets that wait in the
                    # kernel (the blocking driver) call again: the kernel waits there.
                    yield Wait(dst.fd, Event.WRITE)
            yield from run.checkpoint()
    return True


def _splice_through_pipe(run: _Run, src: int, pool: PipePool) -> Attempt:
    pipe = pool.acquire()
    if pipe is None:  # pool exhausted or only small pipes to be had: copying is cheaper
        return False
    progress, dst, waits = run.progress, run.dst, run.waits
    empty, started, source_emptied = True, False, False  # empty: nothing of ours left in the pipe
    trickle = Trickle()
    try:
        while not progress.done:
            # Fill the empty pipe, then drain it completely: so EAGAIN on the fill means
            # "source not readable" and 0 means EOF, never "pipe full".
            if source_emptied and waits.ahead(src):
                yield Wait(src, Event.READ)  # as in _copy: skip the read that would get EAGAIN
            asked = progress.want(pipe.size)
            empty = False  # until the fill is known to have moved nothing, or is drained
            try:
                filled = syscalls.splice(src, pipe.write_fd, asked)
            except OSError as error:
                if not started and error.errno in syscalls.CANNOT_START:
                    empty = True
                    return False
                raise
            if not filled:
                empty = True
                if filled == 0:
                    break
                yield from waits.until(src, Event.READ)
                continue
            started, source_emptied = True, filled < asked
            progress.touch()
            if dst.pending:  # the head leaves with the first bytes, which are in the pipe now
                yield from _flush(run, more=True)
            pending = filled
            while pending:
                called = time.monotonic()
                drained = syscalls.splice(pipe.read_fd, dst.fd, pending, from_pipe=True)
                if drained is None:
                    yield from waits.until(dst.fd, Event.WRITE)
                    continue
                pending -= drained
                progress.add(counters.SPLICE, drained)
                if pending:
                    waits.partial(dst.fd, called)
            empty = True
            if trickle.seen(filled):  # the pipe is empty again: the copy path takes over from here
                return False
            yield from run.checkpoint()
        return True
    finally:
        pool.release(pipe, empty=empty)


def _splice_direct(run: _Run, src: int) -> Attempt:
    progress, dst, waits = run.progress, run.dst, run.waits
    # A subprocess's pipe holds 64 KiB: the writer then stalls and we wake for every 64 KiB,
    # which costs more than copying. Grown to the pool's pipe size, one splice moves up to
    # 1 MiB (and the writer runs ahead of us).
    capacity = syscalls.grow_pipe(src, pipes.PIPE_SIZE)
    started, emptied = False, False
    while not progress.done:
        if emptied and waits.ahead(src):
            yield Wait(src, Event.READ)  # as in _copy: skip the splice that would get EAGAIN
        if dst.pending:  # with MSG_MORE only if bytes follow at once, or the head waits for them
            yield from _flush(run, more=syscalls.readable_now(src))
        called = time.monotonic()
        asked = progress.want(syscalls.MAX_STEP)
        try:
            moved = syscalls.splice(src, dst.fd, asked, from_pipe=True)
        except OSError as error:
            if not started and error.errno in syscalls.CANNOT_START:
                return False
            raise
        if moved is None:
            # EAGAIN from either side. A socket that waits in the kernel says so only after the
            # timeout; otherwise a readable pipe means the socket is the one that is full.
            if run.waits.timed_out(dst.fd, called):
                yield from run.waits.until(dst.fd, Event.WRITE)
            elif syscalls.readable_now(src):
                yield Wait(dst.fd, Event.WRITE)
            else:
                yield Wait(src, Event.READ)
        elif moved == 0:
            break
        else:
            started = True
            # Less than a pipeful, and less than asked: the pipe ran dry (or the socket filled
            # up, and then the wait returns at once).
            emptied = moved < min(asked, capacity)
            progress.add(counters.SPLICE, moved)
            if emptied:
                waits.partial(dst.fd, called)
            yield from run.checkpoint()
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


def _copy(run: _Run, reader: _Reader) -> Step:
    progress = run.progress
    relay = isinstance(reader, _FdReader) and reader.offset is None and run.dst.tls is None
    with buffers.lent(progress.want(buffers.SIZE)) as buffer:
        while not progress.done:
            if relay and not run.dst.pending:  # framing bytes go out with the first data, then the relay
                assert isinstance(reader, _FdReader)
                yield from _relay(run, reader.fd, buffer)
                return
            got = reader.read_into(buffer[: progress.want(len(buffer))])
            if isinstance(got, Wait):
                yield from run.waits.until(got.fd, got.event)
                continue
            if got == 0:
                return
            yield from _write_all(run, buffer[:got])
            yield from run.checkpoint()


def _relay(run: _Run, src: int, buffer: memoryview) -> Step:
    """Copy a socket or pipe to the socket: the hot loop runs in ``syscalls.copy``.

    A source that trickles in small pieces makes the loop's own cost count (one pass per
    piece), so the loop stays in one function until it has to wait.
    """
    progress, dst, waits = run.progress, run.dst.fd, run.waits
    stop_when_emptied = waits.ahead(src)
    moved = partial(progress.add, counters.COPY)
    while not progress.done:
        stopped, unsent = syscalls.copy(src, dst, buffer, progress.want(RELAY_STEP), moved, stop_when_emptied)
        if stopped is syscalls.Stop.EOF:
            return
        if stopped is syscalls.Stop.SOURCE:
            yield from waits.until(src, Event.READ)
        elif stopped is syscalls.Stop.EMPTIED:
            # A short read emptied the source: wait now rather than read into an EAGAIN first.
            yield Wait(src, Event.READ)
        elif stopped is syscalls.Stop.DESTINATION:
            yield from waits.until(dst, Event.WRITE)
            yield from _write_all(run, unsent)
        else:
            yield from run.checkpoint()


def _copy_chunks(run: _Run, body: ChunksBody, framing: BodyWriter | None = None) -> Step:
    """The chunks one after the other; with ``framing``, each as one piece of the body."""
    progress = run.progress
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
        data = data[: progress.want(len(data))]
        if framing is None:
            yield from _write_all(run, data)
            continue
        prefix, suffix = framing.piece(len(data))
        run.dst.pending += prefix
        yield from _write_all(run, data)
        run.dst.pending += suffix


def _send_buffered(run: _Run, fd: int, reader: io.BufferedReader) -> Step:
    """Send what ``reader`` already holds in its buffer before the kernel moves the rest."""
    if not run.progress.done and (
        data := syscalls.buffered_bytes(fd, reader, run.progress.want(buffers.SIZE))
    ):
        yield from _write_all(run, memoryview(data))


def _write_all(run: _Run, data: memoryview) -> Step:
    while data:
        called = time.monotonic()
        written = run.dst.write(data)
        if isinstance(written, Wait):
            yield from run.waits.until(written.fd, written.event)
            continue
        run.progress.add(counters.COPY, written)
        data = data[written:]
        if data:
            run.waits.partial(run.dst.fd, called)


# -- set-up and tear-down -------------------------------------------------------------------


def _settle_file(body: FileBody, progress: Progress) -> None:
    if body.file is not None:  # leave the position just after the last byte sent, as a read would
        if hasattr(body.file, "seek"):
            body.file.seek(body.offset + progress.sent)
        else:
            syscalls.seek(body.fd, body.offset + progress.sent)
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


__all__ = ["Checkpoint", "Destination", "Event", "Pull", "Pump", "Request", "StreamKind", "Wait", "pump"]
