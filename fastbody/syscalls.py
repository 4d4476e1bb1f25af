"""The system calls that move bytes, in one place.

Every call here is non-blocking: it moves what it can and answers ``None`` when it would
have to wait (EAGAIN), so that the pump can say what it waits for and a driver can wait for
it. Errors other than EAGAIN propagate as ``OSError``.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import select
import socket
import ssl
import stat
import struct
import sys
import termios
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

# Linux moves at most this much per sendfile/splice call; larger requests are clipped, and
# some kernels answered unbounded lengths with EINVAL, so every call asks for a bounded step.
MAX_STEP = 0x7FFFF000

# A path that answers the first call with one of these cannot start on this pair of fds
# (file system without splice support, unusual socket family, ...): the next path is tried.
CANNOT_START = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ESPIPE})

# No SPLICE_F_NONBLOCK into a pipe: whether a splice may block is left to the sockets' own
# O_NONBLOCK, which the pump sets (the blocking driver keeps sockets blocking so that the kernel
# does the waiting). The flag would make a Unix socket source non-blocking whatever its mode, and
# so would an O_NONBLOCK pipe, so pooled pipes are blocking; they cannot block us, being filled
# only when empty, by at most their size, and drained only of what they hold.
_SPLICE_FLAGS = os.SPLICE_F_MOVE
_FROM_PIPE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


def sendfile(dst: int, src: int, offset: int, count: int) -> int | None:
    """Send up to ``count`` bytes of file ``src`` from ``offset``; ``None`` if ``dst`` is full."""
    try:
        return os.sendfile(dst, src, offset, min(count, MAX_STEP))
    except BlockingIOError:
        return None


def splice(src: int, dst: int, count: int, *, from_pipe: bool = False) -> int | None:
    """Move up to ``count`` bytes from ``src`` to ``dst`` (one is a pipe); ``None`` on EAGAIN.

    ``from_pipe``: ``src`` is the pipe and ``dst`` a socket. Then SPLICE_F_NONBLOCK is safe (it
    touches only the pipe side; the socket keeps its own mode) and needed: kernels before 5.1
    do not take it from the pipe's O_NONBLOCK, and an empty pipe would block the call.
    """
    try:
        return os.splice(
            src, dst, min(count, MAX_STEP), flags=_FROM_PIPE_FLAGS if from_pipe else _SPLICE_FLAGS
        )
    except BlockingIOError:
        return None


def read_into(fd: int, buffer: memoryview, offset: int | None = None) -> int | None:
    """Read into ``buffer`` (at ``offset`` for a file, leaving its position alone); ``None`` on EAGAIN."""
    try:
        if offset is None:
            return os.readv(fd, [buffer])
        return os.preadv(fd, [buffer], offset)
    except BlockingIOError:
        return None


def peek(sock: socket.socket, size: int) -> bytes | None:
    """Up to ``size`` bytes waiting in ``sock``, left there (``MSG_PEEK``); ``None`` if none yet."""
    try:
        return sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None


def take(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes that a peek saw waiting in ``sock``."""
    data = sock.recv(size, socket.MSG_DONTWAIT)
    if len(data) != size:
        raise OSError(f"socket gave {len(data)} of {size} bytes it had shown")
    return data


def pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes of file ``fd`` from ``offset`` (its position left alone)."""
    return os.pread(fd, size, offset)


def read(fd: int, size: int) -> bytes | None:
    """Up to ``size`` bytes of ``fd``; ``None`` on EAGAIN."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None


def write(fd: int, data: memoryview) -> int | None:
    """Write what the socket takes of ``data``; ``None`` if it takes nothing now."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return None


def write_parts(fd: int, parts: list[bytes | memoryview]) -> int | None:
    """Write ``parts`` in one call (``writev``), as far as the socket takes them; ``None`` if
    it takes nothing now."""
    try:
        return os.writev(fd, parts)
    except BlockingIOError:
        return None


def send(handle: socket.socket, data: bytes, *, more: bool) -> int | None:
    """``send`` on a socket object, with ``MSG_MORE`` when ``more`` (TCP holds the bytes for
    what follows at once, so a head leaves in one packet with the body's first bytes)."""
    family = super(socket.socket, handle).family  # the C socket's int: no enum made per call
    flags = socket.MSG_MORE if more and family in (socket.AF_INET, socket.AF_INET6) else 0
    try:
        return handle.send(data, flags)
    except BlockingIOError:
        return None


def send_parts(handle: socket.socket, parts: list[bytes | memoryview]) -> int:
    """As much of ``parts`` as the socket takes now, in one ``sendmsg`` that never waits
    (``MSG_DONTWAIT``, whatever the socket's mode): the bytes sent, 0 when it takes none."""
    try:
        return handle.sendmsg([part for part in parts if part], [], socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0


@contextmanager
def tls_timeout(tls: ssl.SSLSocket, timeout: float | None) -> Iterator[None]:
    """An SSL socket keeps its own timeout: 0 makes its calls non-blocking, a number or None
    lets it wait itself (raising TimeoutError); the caller's is put back after."""
    previous = tls.gettimeout()
    tls.settimeout(timeout)
    try:
        yield
    finally:
        tls.settimeout(previous)


def buffered_bytes(fd: int, reader: Any, most: int | None = None) -> bytes:
    """What a buffered reader (``io.BufferedReader``) already holds, read into Python and so
    unseen by the kernel; at most ``most`` bytes of it, the rest left in its buffer."""
    with nonblocking(fd):  # peek() reads once when its buffer is empty: never wait there
        try:
            held = len(reader.peek(1))
        except BlockingIOError:
            return b""
        held = held if most is None else min(held, most)
        return bytes(reader.read(held)) if held else b""


@contextmanager
def own_handle(fd: int) -> Iterator[socket.socket]:
    """A non-blocking socket object on a dup of socket ``fd``, closed afterwards: for calls with
    flags on an fd that somebody else owns (an asyncio transport's)."""
    handle = socket.socket(fileno=os.dup(fd))
    try:
        handle.setblocking(False)
        yield handle
    finally:
        handle.close()


class Stop(enum.Enum):
    """Why ``copy`` handed back."""

    DONE = "done"  # moved what was asked
    EOF = "eof"  # the source ended
    SOURCE = "source"  # reading would block (EAGAIN)
    EMPTIED = "emptied"  # a short read emptied the source (asked to stop there)
    DESTINATION = "destination"  # writing would block; ``unsent`` holds what is still to write


def copy(
    src: int,
    dst: int,
    buffer: memoryview,
    most: int,
    written: Callable[[int], object],
    stop_when_emptied: bool,
) -> tuple[Stop, memoryview]:
    """Read ``src`` into ``buffer`` and write it to ``dst`` until ``most`` bytes are written or
    a call would block; ``written(n)`` is told how many bytes went out when it returns or raises.

    Returns why it stopped and the bytes read but not yet written (empty unless
    ``Stop.DESTINATION``). This is the loop a trickling source spins in, one pass per piece:
    it keeps to plain calls.
    """
    whole = [buffer]
    size = len(buffer)
    total = 0
    try:
        while total < most:
            asked = min(size, most - total)
            try:
                got = os.readv(src, whole if asked == size else [buffer[:asked]])
            except BlockingIOError:
                return Stop.SOURCE, buffer[:0]
            if not got:
                return Stop.EOF, buffer[:0]
            done = 0
            while done < got:
                try:
                    sent = os.write(dst, buffer[done:got])
                except BlockingIOError:
                    return Stop.DESTINATION, buffer[done:got]
                done += sent
                total += sent
            if stop_when_emptied and got < asked:
                return Stop.EMPTIED, buffer[:0]
        return Stop.DONE, buffer[:0]
    finally:
        written(total)


def readable_now(fd: int) -> bool:
    """Whether reading ``fd`` would not block (data waiting, EOF or error)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def hung_up(fd: int) -> bool:
    """Whether the peer of the socket ``fd`` closed or reset it (``POLLRDHUP``, ``POLLHUP``,
    ``POLLERR``), whatever unread bytes still wait (a pipelined request is no hang-up)."""
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def pending_bytes(fd: int) -> int:
    """How many bytes wait to be read from the socket or pipe ``fd`` (``FIONREAD``)."""
    size = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, size)
    return int.from_bytes(size, sys.byteorder)


def pending_error(fd: int) -> int:
    """The error a socket holds (``SO_ERROR``, cleared by reading it); 0 for none or a non-socket."""
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        return 0
    with socket.socket(fileno=os.dup(fd)) as sock:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def file_type(fd: int) -> int:
    """The ``stat.S_IFMT`` bits of what ``fd`` refers to."""
    return stat.S_IFMT(os.fstat(fd).st_mode)


def file_size(fd: int) -> int:
    return os.fstat(fd).st_size


def file_kind_and_size(fd: int) -> tuple[int, int]:
    """The ``stat.S_IFMT`` bits of what ``fd`` refers to and its size, from one ``fstat``."""
    status = os.fstat(fd)
    return stat.S_IFMT(status.st_mode), status.st_size


@contextmanager
def nonblocking(fd: int) -> Iterator[None]:
    """Make ``fd`` non-blocking for the duration, then put back the mode it had."""
    was_blocking = os.get_blocking(fd)
    if was_blocking:
        os.set_blocking(fd, False)
    try:
        yield
    finally:
        if was_blocking:
            with suppress(OSError):  # the owner closed it meanwhile: nothing left to restore
                os.set_blocking(fd, True)


@contextmanager
def kernel_waits(
    fd: int, option: int, timeout: float | None, handle: socket.socket | None = None
) -> Iterator[None]:
    """Make socket ``fd`` blocking, each wait bounded in the kernel by ``timeout`` seconds.

    ``option`` is ``SO_SNDTIMEO`` (a destination) or ``SO_RCVTIMEO`` (a source). A call that
    made no progress for that long then fails with EAGAIN. The socket's mode and option are
    put back afterwards. ``handle``: the caller's socket object on ``fd``; when the fd is
    blocking already and the object has no Python timeout (a worker's connection), nothing
    changes but the option, set and put back through the object: 4 system calls, not 9
    (under a threaded worker each call lets go of the GIL, and another thread may take it).
    The fd's own mode is asked, not the object's word: an fd made non-blocking behind the
    object's back would turn every kernel wait into a busy loop.
    """
    was_blocking = os.get_blocking(fd)  # before the handle: with a default timeout set, it changes it
    if was_blocking and handle is not None and handle.gettimeout() is None:
        with _timeout_option(handle, option, timeout):
            yield
        return
    sock = socket.socket(fileno=fd)  # a handle for setsockopt, detached (not closed) at the end
    try:
        with _timeout_option(sock, option, timeout):
            os.set_blocking(fd, True)
            try:
                yield
            finally:
                with suppress(OSError):  # the owner closed it meanwhile: nothing left to restore
                    os.set_blocking(fd, was_blocking)
    finally:
        sock.detach()


@contextmanager
def _timeout_option(sock: socket.socket, option: int, timeout: float | None) -> Iterator[None]:
    """``option`` (``SO_SNDTIMEO``/``SO_RCVTIMEO``) set to ``timeout`` seconds (``None``: no
    limit) for the duration, then put back as it was."""
    previous = sock.getsockopt(socket.SOL_SOCKET, option, 16)
    seconds = 0.0 if timeout is None else max(timeout, 1e-6)  # 0 means "wait forever" here
    sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", int(seconds), int(seconds % 1 * 1e6)))
    try:
        yield
    finally:
        with suppress(OSError):  # the owner closed it meanwhile: nothing left to restore
            sock.setsockopt(socket.SOL_SOCKET, option, previous)


def new_pipe(size: int) -> tuple[int, int, int]:
    """A close-on-exec pipe asked to hold ``size`` bytes: ``(read_fd, write_fd, real_size)``.

    The kernel may refuse the size (per-user pipe budget spent, ``pipe-max-size``) and leave
    the pipe small, so the size is read back rather than trusted.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    return read_fd, write_fd, grow_pipe(write_fd, size)


def grow_pipe(fd: int, size: int) -> int:
    """Ask the pipe ``fd`` to hold ``size`` bytes (never shrink it); return the size it has.

    Best effort: past the user's pipe budget or ``pipe-max-size`` the kernel refuses and the
    pipe keeps its size.
    """
    current: int = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    if current >= size:
        return current
    # Past pipe-max-size an unprivileged process is refused outright (EPERM): ask for at most
    # that, so a large configured size still gets the largest pipe allowed, not the smallest.
    for asked in dict.fromkeys((size, min(size, pipe_max_size()))):
        with suppress(OSError):
            return max(current, int(fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, asked)))
    return current


def pipe_max_size() -> int:
    """The largest pipe an unprivileged process may ask for (``/proc/sys/fs/pipe-max-size``)."""
    try:
        with open("/proc/sys/fs/pipe-max-size") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return 1 << 20  # Linux's default


def dup(fd: int) -> int:
    return os.dup(fd)


def seek(fd: int, position: int) -> None:
    os.lseek(fd, position, os.SEEK_SET)


def close(fd: int) -> None:
    with suppress(OSError):
        os.close(fd)
