"""gunicorn workers whose ``wsgi.file_wrapper`` bodies go out by sendfile, splice or copy.

    gunicorn -k egg:fastbody#sync app:app
    gunicorn -k egg:fastbody#gthread --threads 8 app:app

(or ``-k fastbody.integrations.gunicorn.FastSync`` / ``FastThread``). Supports gunicorn >= 26.2.

An app returns ``environ["wsgi.file_wrapper"](source)`` as usual; ``source`` may be a regular
file, a socket, a pipe (``subprocess.Popen(...).stdout``) or a file-like object, and
``environ["wsgi.file_wrapper"](source, length=N)`` says how many bytes to send. The worker
then:

- adds ``Content-Length`` when the app set none and the length is known (file size minus
  position, a seekable file-like's remaining bytes, or ``length``), so no chunked framing;
- sends the head together with the start of the body (``MSG_MORE``; one ``sendmsg`` for small
  files);
- moves the body with ``fastbody.transfer``: sendfile for files, splice for sockets and pipes,
  a copy for the rest. With the length unknown, HTTP/1.1 clients get chunked framing whose
  size lines Python writes while each chunk's bytes still move by splice; HTTP/1.0 clients
  get a body delimited by closing the connection;
- closes the connection at once, logging the counts, when the body ends before its length,
  the client goes away or makes no progress for ``--timeout`` seconds;
- keeps the sync worker's heartbeat going while a transfer moves, so a slow client is not
  killed at ``--timeout``.

``--no-sendfile`` (or ``SENDFILE=0``) and TLS keep the framing and use the copy path. Plain
iterable bodies are written by gunicorn exactly as before.

How it plugs in: gunicorn builds a ``Response`` per request (``gunicorn.http.wsgi.create``);
the workers wrap the app so that, before it runs, that response becomes a ``FastResponse``
(a subclass that overrides ``write_file`` and ``close`` only) and ``wsgi.file_wrapper`` becomes
``FileWrapper`` (a subclass of gunicorn's). gunicorn's request handling is not copied.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

import fastbody
from fastbody import readiness

from .failures import log_broken

__all__ = ["FastResponse", "FastSync", "FastThread", "FileWrapper", "Framing", "Pieces", "frame"]

log = logging.getLogger("gunicorn.error")

SMALL_FILE = 32 << 10
"""Files up to this size go out with the head in one ``sendmsg`` (kernel paths save nothing)."""

COPY_CHUNK = 1 << 20
"""Bytes read at a time from a source that must be copied while its length is unknown."""

_NO_FD = -1


class FileWrapper(gunicorn_wsgi.FileWrapper):  # type: ignore[misc]
    """``wsgi.file_wrapper``: a file, socket, pipe or file-like, and optionally its length.

    ``length`` caps the body at that many bytes (the rest of the source stays unread) and lets
    the worker send ``Content-Length`` for sources whose size it cannot see (sockets, pipes).
    Iterating it (as middleware or another server may) reads ``blksize`` bytes at a time.
    """

    def __init__(self, filelike: Any, blksize: int = 8192, length: int | None = None) -> None:
        super().__init__(filelike, blksize)
        if length is not None and length < 0:
            raise ValueError(f"length must be None or >= 0, not {length}")
        self.length = length
        self._left = length

    def __next__(self) -> bytes:
        want = self.blksize if self._left is None else min(self.blksize, self._left)
        if want <= 0:
            raise StopIteration
        read = getattr(self.filelike, "read", None)
        data = read(want) if read is not None else self.filelike.recv(want)
        if not data:
            raise StopIteration
        if self._left is not None:
            self._left -= len(data)
        return bytes(data)

    def __getitem__(self, key: object) -> bytes:
        try:
            return self.__next__()
        except StopIteration:
            raise IndexError from None


class Pieces:
    """A body that arrives in pieces of known size whose total nobody knows (a chunked
    upstream's): ``bytes``, or ``(source, count)`` — ``count`` bytes of a socket, pipe or file
    that the worker moves by splice or sendfile. Give it to ``wsgi.file_wrapper``; each piece
    then goes out as one HTTP/1.1 chunk. The iterable is consumed lazily, one piece after the
    previous one was sent, and closed (if it can be) with the response.

    Read as a file (by middleware, or another server's wrapper), it yields the same bytes.
    """

    def __init__(self, pieces: Iterable[bytes | tuple[Any, int]]) -> None:
        self.pieces = iter(pieces)
        self._current: tuple[Any, int] | None = None  # a source piece being read by read()

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._current is None:
                piece = next(self.pieces, None)
                if piece is None:
                    return b""
                if isinstance(piece, bytes | bytearray | memoryview):
                    if piece:  # b"" would read as the end
                        return bytes(piece)  # a whole bytes piece: a short read is allowed
                    continue
                self._current = piece
            source, left = self._current
            if left <= 0:
                self._current = None
                continue
            want = left if size < 0 else min(size, left)
            data = _read_into_bytes(source, want)
            if not data:
                raise fastbody.IncompleteTransfer.make(None, f"a piece ended {left} bytes short", 0)
            self._current = (source, left - len(data))
            return data

    def close(self) -> None:
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()


def _pieces_of(pieces: Pieces, response: Any) -> Iterator[bytes | tuple[Any, int]]:
    """The pieces; an error the iterable raises (a failing upstream) carries the bytes sent."""
    while True:
        try:
            piece = next(pieces.pieces, None)
        except fastbody.TransferError as error:
            error.sent += response.sent
            raise
        if piece is None:
            return
        yield piece


def _read_into_bytes(source: Any, size: int) -> bytes:
    buffer = bytearray(size)
    return bytes(buffer[: _read_into(source, buffer)])


@dataclass(frozen=True)
class Framing:
    """How a ``file_wrapper`` body goes on the wire: a pure decision, made before the head."""

    add_length: int | None  # Content-Length to add to the head (the app set none)
    count: int | None  # bytes to send; None: until the source ends
    chunked: bool  # HTTP/1.1 chunked framing (length unknown)
    close: bool  # the end of the body is the end of the connection (HTTP/1.0, length unknown)


def frame(*, app_length: int | None, known_length: int | None, http11: bool, omits_body: bool) -> Framing:
    """The framing of a body whose length the app stated (``app_length``) or the source tells."""
    if omits_body:  # HEAD, 1xx, 204, 304: a HEAD may say what the GET would send
        add = None if app_length is not None else known_length
        return Framing(add_length=add, count=0, chunked=False, close=False)
    if app_length is not None:
        count = app_length if known_length is None else min(app_length, known_length)
        # A source shorter than the app's Content-Length: send what there is, then close.
        return Framing(add_length=None, count=count, chunked=False, close=count < app_length)
    if known_length is not None:
        return Framing(add_length=known_length, count=known_length, chunked=False, close=False)
    if http11:
        return Framing(add_length=None, count=None, chunked=True, close=False)
    return Framing(add_length=None, count=None, chunked=False, close=True)


class FastResponse(gunicorn_wsgi.Response):  # type: ignore[misc]
    """gunicorn's ``Response`` with ``write_file`` done by ``fastbody.transfer``.

    Instances are gunicorn's own responses whose class the worker changed before the app ran,
    so this subclass adds no ``__init__`` state: everything it keeps has a class default.
    """

    response_length: int | None
    heartbeat: AbstractContextManager[object] | None = None  # the sync worker's, during a transfer
    _pending_crlf = False  # a chunk's data went out and its CRLF has not

    def write_file(self, respiter: Any) -> None:
        if not isinstance(respiter, FileWrapper) or self.headers_sent:
            # The app already wrote part of the body with write(): its framing is fixed.
            super().write_file(respiter)
            return
        source = respiter.filelike
        kernel = self.cfg.sendfile is not False and not self.cfg.is_ssl
        fd = _fd_of(source) if not isinstance(source, Pieces) else _NO_FD
        is_file = fd != _NO_FD and stat.S_ISREG(os.fstat(fd).st_mode)
        known = _known_length(source, fd, is_file, respiter.length)
        framing = frame(
            app_length=self.response_length,
            known_length=known,
            http11=self.req.version >= (1, 1),
            omits_body=self._omits_body,
        )
        if framing.add_length is not None and not self._response_forbids_content_length(self.status_code):
            self.headers.append(("Content-Length", str(framing.add_length)))
            self.response_length = framing.add_length
        self.chunked = framing.chunked
        if framing.close:
            self.force_close()
        if self._omits_body:
            self.send_headers()  # no body, and no fd-moving syscall
            return
        head = self._head()
        if not kernel and not isinstance(source, Pieces):
            source = _CopyOnly(source)
        small = is_file and kernel and framing.count is not None and framing.count <= SMALL_FILE
        # The heartbeat is for transfers that may take a while, not one write of a small file.
        guard = self.heartbeat if self.heartbeat is not None and not small else nullcontext()
        try:
            with guard:
                if isinstance(source, Pieces):
                    self._send_pieces(head, source, framing.chunked, kernel, framing.count)
                elif framing.chunked:
                    self._send_chunked(head, source, fd if kernel else _NO_FD)
                else:
                    self._send_framed(head, source, fd, is_file and kernel, framing.count)
        except fastbody.TransferError as error:
            self._broken(error, framing.count)
            return
        expected = self.response_length if self.response_length is not None else framing.count
        if expected is not None and self.sent < expected:  # the source ended early
            self._broken(fastbody.IncompleteTransfer.short(self.sent, expected), expected)

    def close(self) -> None:
        if self._pending_crlf:
            self._pending_crlf = False
            self.sock.sendall(b"\r\n0\r\n\r\n")  # the last chunk's CRLF and the end
            return
        super().close()

    # The head and the body

    def _head(self) -> bytes:
        """The response head, as gunicorn's ``send_headers`` would write it (now marked sent)."""
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self.headers_sent = True
        return ("".join(lines) + "\r\n").encode("latin-1")

    def _send_framed(self, head: bytes, source: Any, fd: int, is_file: bool, count: int | None) -> None:
        """A body of known length (``count``), or one delimited by the end of the connection."""
        if count == 0:
            self.sock.sendall(head)
            return
        if is_file and count is not None and count <= SMALL_FILE:
            self._send_small_file(head, source, fd, count)
            return
        _send_more(self.sock, head)  # held back by the kernel until the body's first bytes
        try:
            self.sent = fastbody.transfer(self.sock, source, count=count, timeout=self._timeout())
        except fastbody.TransferError as error:
            self.sent = error.sent
            raise

    def _send_small_file(self, head: bytes, source: Any, fd: int, count: int) -> None:
        position = source.tell() if hasattr(source, "tell") else os.lseek(fd, 0, os.SEEK_CUR)
        data = os.pread(fd, count, position)
        if hasattr(source, "seek"):
            source.seek(position + len(data))
        if isinstance(self.sock, ssl.SSLSocket):
            self.sock.sendall(head + data)
        else:
            _sendmsg_all(self.sock, [head, data])
        self.sent = len(data)

    def _send_chunked(self, head: bytes, source: Any, fd: int) -> None:
        """A body of unknown length in HTTP/1.1 chunks: Python writes each size line, the engine
        moves the chunk's bytes (by splice for a socket or pipe it can splice)."""
        self.sent = 0
        prefix = head
        buffered = readiness.buffered(source) if fd != _NO_FD else b""
        if buffered:
            prefix = self._send_chunk(prefix, buffered, len(buffered))
        if fd != _NO_FD and not isinstance(source, ssl.SSLSocket):
            # The kernel says how many bytes wait (FIONREAD): that is the next chunk.
            while size := readiness.pending(fd, self._timeout(), self.sent):
                prefix = self._send_chunk(prefix, source, size)
        else:
            buffer = bytearray(COPY_CHUNK)
            while got := _read_into(source, buffer):
                prefix = self._send_chunk(prefix, memoryview(buffer)[:got], got)
        if prefix is head:
            self.sock.sendall(head)  # an empty body: close() sends the last chunk
        else:
            self._pending_crlf = True

    def _send_pieces(
        self, head: bytes, pieces: Pieces, chunked: bool, kernel: bool, limit: int | None
    ) -> None:
        """Each piece as one chunk (or, unchunked, one after the other, never past ``limit``,
        the Content-Length): Python writes the size lines, the engine moves the bytes."""
        self.sent = 0
        # The head goes now: the first piece may be long in coming (an upstream event stream).
        self.sock.sendall(head)
        prefix = b""
        for piece in _pieces_of(pieces, self):
            source, size = piece if isinstance(piece, tuple) else (piece, len(piece))
            if size == 0:
                continue
            if limit is not None and self.sent + size > limit:
                raise fastbody.TransferError.make(
                    None, f"body longer than its Content-Length {limit}", self.sent
                )
            literal = isinstance(piece, bytes | bytearray | memoryview)
            source = source if kernel or literal else _CopyOnly(source)
            if chunked:
                prefix = self._send_chunk(prefix, source, size)
                continue
            try:
                self.sent += fastbody.transfer(self.sock, source, count=size, timeout=self._timeout())
            except fastbody.TransferError as error:
                error.sent += self.sent
                raise
        self._pending_crlf = chunked and bool(prefix)  # else close() sends the last chunk alone

    def _send_chunk(self, prefix: bytes, source: Any, size: int) -> bytes:
        """Send ``prefix``, one chunk's size line and ``size`` bytes of ``source``; the next prefix."""
        _send_more(self.sock, prefix + b"%X\r\n" % size)
        try:
            self.sent += fastbody.transfer(self.sock, source, count=size, timeout=self._timeout())
        except fastbody.TransferError as error:
            error.sent += self.sent
            raise
        return b"\r\n"

    def _broken(self, error: fastbody.TransferError, expected: int | None) -> None:
        """The body could not be sent whole: close the connection and say why, with counts."""
        self.sent = error.sent
        self.force_close()
        self.chunked = False  # close() must not end a chunked body it did not finish
        self._pending_crlf = False
        log_broken(log, error, expected, f"{self.req.method} {self.req.path}", self._timeout())
        # Close at once: whatever the worker does next, the client sees the end now.
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _timeout(self) -> float | None:
        timeout = self.cfg.timeout
        return float(timeout) if timeout else None


# Sources


def _fd_of(source: Any) -> int:
    fileno = getattr(source, "fileno", None)
    if fileno is None:
        return _NO_FD
    try:
        fd = fileno()
    except (OSError, ValueError):
        return _NO_FD
    return fd if isinstance(fd, int) and fd >= 0 else _NO_FD


def _known_length(source: Any, fd: int, is_file: bool, length: int | None) -> int | None:
    """The bytes the source has left, when they can be told without reading; capped by ``length``."""
    left: int | None = None
    if is_file:
        position = source.tell() if hasattr(source, "tell") else os.lseek(fd, 0, os.SEEK_CUR)
        left = max(os.fstat(fd).st_size - position, 0)
    elif fd == _NO_FD and _seekable(source):
        position = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(position)
        left = max(end - position, 0)
    if length is None:
        return left
    return length if left is None else min(length, left)


def _seekable(source: Any) -> bool:
    try:
        return bool(source.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class _CopyOnly:
    """A source seen without its fd, so that the engine copies it (``--no-sendfile``)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def readinto(self, buffer: Any) -> int:
        return _read_into(self.source, buffer)


def _read_into(source: Any, buffer: Any) -> int:
    if isinstance(source, socket.socket):
        return source.recv_into(buffer)
    if hasattr(source, "readinto"):
        return int(source.readinto(buffer) or 0)
    data = source.read(len(buffer))
    buffer[: len(data)] = data
    return len(data)


# Writing


def _send_more(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` and let the kernel hold it back for the bytes that follow at once."""
    if isinstance(sock, ssl.SSLSocket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.sendall(data)
    else:
        sock.sendall(data, socket.MSG_MORE)


def _sendmsg_all(sock: socket.socket, parts: list[bytes]) -> None:
    views = [memoryview(part) for part in parts if part]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


# Workers

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _upgrade(app: WSGIApp, heartbeat: AbstractContextManager[object] | None) -> WSGIApp:
    """``app``, with gunicorn's HTTP/1 responses turned into ``FastResponse`` before it runs."""

    def fastbody_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        response: Any = getattr(start_response, "__self__", None)
        if type(response) is gunicorn_wsgi.Response:  # not HTTP/2's own response class
            response.__class__ = FastResponse
            response.heartbeat = heartbeat
            environ["wsgi.file_wrapper"] = FileWrapper
        return app(environ, start_response)

    return fastbody_app


class Heartbeat:
    """Notifies the arbiter from a thread while a transfer runs, so a slow client that keeps
    reading does not get the sync worker killed at ``--timeout``. The transfer's own timeout
    cuts off a client that stops reading."""

    def __init__(self, notify: Callable[[], None], interval: float) -> None:
        self.notify = notify
        self.interval = interval
        self.active = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="fastbody-heartbeat", daemon=True)
            self.thread.start()
        self.active.set()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.active.clear()

    def _run(self) -> None:
        while True:
            self.active.wait()
            self.notify()
            time.sleep(self.interval)


class FastSync(SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker with fastbody bodies (``-k egg:fastbody#sync``)."""

    wsgi: WSGIApp

    def load_wsgi(self) -> None:
        super().load_wsgi()
        interval = max(min(self.timeout / 4, 1.0), 0.05) if self.timeout else 1.0
        self.wsgi = _upgrade(self.wsgi, Heartbeat(self.notify, interval))


class FastThread(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker with fastbody bodies (``-k egg:fastbody#gthread``).

    Its main thread notifies the arbiter whatever the request threads are doing."""

    wsgi: WSGIApp

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = _upgrade(self.wsgi, None)


def __getattr__(name: str) -> Any:
    """``fastbody.integrations.gunicorn.FastUvicornWorker``, imported only when asked for (it
    needs uvicorn and uvicorn-worker, which the WSGI workers do not)."""
    if name == "FastUvicornWorker":
        from .uvicorn_worker import FastUvicornWorker

        return FastUvicornWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
