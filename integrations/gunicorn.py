"""gunicorn workers whose ``wsgi.file_wrapper`` bodies go out by sendfile, splice or copy.

    gunicorn -k egg:fastbody#sync app:app
    gunicorn -k egg:fastbody#gthread --threads 8 app:app

(or ``-k fastbody.integrations.gunicorn.FastSync`` / ``FastThread``, or ``...gunicorn:FastSync``:
``fastbody.integrations`` resolves the colon form gunicorn itself cannot). Supports gunicorn >= 26.2.

An app returns ``environ["wsgi.file_wrapper"](source)`` as usual; ``source`` may be a regular
file, a socket, a pipe (``subprocess.Popen(...).stdout``) or a file-like object, and
``environ["wsgi.file_wrapper"](source, length=N)`` says how many bytes to send. The worker
then:

- decides the framing with ``fastbody.framing.for_response``: ``Content-Length`` added when the
  app set none and the length is known (file size minus position, a seekable file-like's
  remaining bytes, or ``length``); chunked for HTTP/1.1 clients otherwise, the connection's end
  for HTTP/1.0 ones;
- hands head, framing and source to ``fastbody.ResponseWriter``, which sends the head with the
  body's first bytes, moves the body (sendfile for files, splice for sockets and pipes, a copy
  for the rest; chunk size lines around spliced chunks) and counts every byte;
- closes the connection at once, logging the counts, when the body ends before its length,
  the client goes away or makes no progress for ``--timeout`` seconds;
- keeps the sync worker's heartbeat going while a transfer moves, so a slow client is not
  killed at ``--timeout``.

``--no-sendfile`` (or ``SENDFILE=0``) and TLS keep the framing and use the copy path. Plain
iterable bodies are written by gunicorn exactly as before.

Files named by the app rather than handed over, and ranges of files:

- ``FASTBODY_XSENDFILE_ROOTS`` / ``FASTBODY_ACCEL_REDIRECT`` (``fastbody.integrations.files.handoff``,
  read once per worker): a response carrying ``X-Sendfile`` / ``X-Accel-Redirect`` is answered
  with the file it names (``files.wsgi.HandoffMiddleware``: ranges, conditionals, HEAD), each
  part by sendfile; unset, the headers pass through untouched;
- werkzeug's ``_RangeWrapper`` around a ``wsgi.file_wrapper`` of a file (Flask's ``send_file``
  answering a Range) and whitenoise's ``SlicedFile`` (its range responses) are sent as that
  range of the file, by sendfile, under the app's own 206 head.

How it plugs in: gunicorn builds a ``Response`` per request (``gunicorn.http.wsgi.create``);
the workers wrap the app so that, before it runs, that response becomes a ``FastResponse``
(a subclass that overrides ``write_file`` and ``close`` only) and ``wsgi.file_wrapper`` becomes
``FileWrapper`` (a subclass of gunicorn's). gunicorn's request handling is not copied.
"""

from __future__ import annotations

import errno
import functools
import io
import logging
import socket
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
import fastbody.plan

from .failures import blame, log_broken, outcome, paths_label
from .files.answer import FileRange
from .files.handoff import Handoff
from .files.wsgi import FileParts, HandoffMiddleware, sliced_file, werkzeug_range

__all__ = ["FastResponse", "FastSync", "FastThread", "FileWrapper", "Pieces"]

log = logging.getLogger("gunicorn.error")


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
        data = fastbody.read_some(self.filelike, want)
        if not data:
            raise StopIteration
        if self._left is not None:
            self._left -= len(data)
        return data

    def __getitem__(self, key: object) -> bytes:
        try:
            return self.__next__()
        except StopIteration:
            raise IndexError from None


Piece = bytes | tuple[Any, int]


class Pieces:
    """A body that arrives in pieces of known size whose total nobody knows (a chunked
    upstream's): ``bytes``, or ``(source, count)`` — ``count`` bytes of a socket, pipe or file
    that the worker moves by splice or sendfile. Give it to ``wsgi.file_wrapper``; each piece
    then goes out as one HTTP/1.1 chunk. The iterable is consumed lazily, one piece after the
    previous one was sent whole, and closed (if it can be) with the response.

    Read as a file (by middleware, or another server's wrapper), it yields the same bytes.
    """

    def __init__(self, pieces: Iterable[Piece]) -> None:
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
            data = fastbody.read_some(source, left if size < 0 else min(size, left))
            if not data:
                raise fastbody.IncompleteTransfer.make(None, f"a piece ended {left} bytes short", 0)
            self._current = (source, left - len(data))
            return data

    def close(self) -> None:
        close = getattr(self.pieces, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Settings:
    """What a worker's configuration says about each of its responses, read once per worker
    (gunicorn's ``cfg.sendfile`` reads the environment every time it is asked)."""

    kernel: bool  # False: --no-sendfile or SENDFILE=0, every byte copied
    timeout: float | None  # --timeout: seconds a transfer may make no progress; None: no limit

    @classmethod
    def of(cls, cfg: Any) -> Settings:
        timeout = cfg.timeout
        return cls(kernel=cfg.sendfile is not False, timeout=float(timeout) if timeout else None)


class FastResponse(gunicorn_wsgi.Response):  # type: ignore[misc]
    """gunicorn's ``Response`` with ``write_file`` done by fastbody's ``ResponseWriter``.

    Instances are gunicorn's own responses whose class the worker changed before the app ran,
    so this subclass adds no ``__init__`` state: everything it keeps has a class default.
    """

    response_length: int | None
    heartbeat: AbstractContextManager[object] | None = None  # the sync worker's, during a transfer
    ended = False  # the body went out through fastbody's writer, framing and all
    environ: dict[str, Any] | None = None  # the request's: ``fastbody.path`` goes in it, for the access log
    settings: Settings | None = None  # the worker's; None: read from ``cfg`` when needed

    def write_file(self, respiter: Any) -> None:
        if not isinstance(respiter, FileWrapper) or self.headers_sent:
            # The app already wrote part of the body with write(): its framing is fixed.
            super().write_file(respiter)
            return
        source = respiter.filelike
        pieces = source if isinstance(source, Pieces) else None
        parts = None if pieces is not None or respiter.length is not None else _file_parts(source)
        described = None if pieces is not None or parts is not None else fastbody.describe(source)
        known = parts.length if parts is not None else None if described is None else described.length
        if respiter.length is not None:
            known = respiter.length if known is None else min(known, respiter.length)
        framing = fastbody.framing.for_response(
            http11=self.req.version >= (1, 1),
            method=self.req.method,
            status=self.status_code,
            declared=_declared(self.response_length),
            known=known,
        )
        if framing.add_length:
            self.headers.append(("Content-Length", str(framing.length)))
            self.response_length = framing.length
        self.chunked = framing.delimit is fastbody.framing.Delimit.CHUNKED  # gunicorn's head says so
        if framing.close:
            self.force_close()
        # reports=False: the response's end is told below, its failure blamed on the right side.
        settings = self._settings()
        writer = fastbody.ResponseWriter(
            self.sock,
            framing,
            head=self._head(),
            timeout=settings.timeout,
            kernel=settings.kernel,
            reports=False,
        )
        count = known
        if framing.delimit is fastbody.framing.Delimit.LENGTH:  # never past the app's length, nor length=
            count = framing.length if respiter.length is None else min(framing.length or 0, respiter.length)
        # The heartbeat is for transfers that may take a while, not one write of a small file.
        small = count is not None and count < fastbody.plan.SMALL_BODY
        guard = self.heartbeat if self.heartbeat is not None and not small else _NO_GUARD
        current: object = described  # the source of the piece under way: who failed, if one does
        failure: BaseException | None = None
        try:
            with guard:
                if self._omits_body:
                    writer.end()  # the head alone
                elif pieces is not None:
                    writer.send(b"")  # the head now: the first piece may be long in coming (events)
                    for piece in _pieces_of(pieces, writer):
                        current, count = piece if isinstance(piece, tuple) else (piece, None)
                        writer.send(current, count=count)
                    writer.end()
                elif parts is not None:
                    _send_parts(parts, writer)
                else:
                    writer.send(described, count=count, last=True)
        except fastbody.TransferError as error:
            failure = blame(error, current, self.sock)
            self._broken(failure, framing.length)
        except fastbody.framing.FramingError as error:  # pieces longer than the app's length
            failure = fastbody.TransferError.make(None, str(error), writer.sent)
            self._broken(failure, framing.length)
        except BaseException as error:  # (an app's pieces that raised: told, then let out)
            failure = error
            raise
        finally:
            paths = writer.paths
            fastbody.counters.response_ended(paths, outcome(failure))
            self.sent = writer.sent
            self.ended = True  # the writer ended the body (or it broke): close() adds nothing
            if self.environ is not None:  # gunicorn logs after close(): %({fastbody.path}e)s
                self.environ["fastbody.path"] = paths_label(paths)

    def close(self) -> None:
        if not self.ended:
            super().close()

    # The head and the body

    def _head(self) -> bytes:
        """The response head, as gunicorn's ``send_headers`` would write it (now marked sent)."""
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self.headers_sent = True
        return ("".join(lines) + "\r\n").encode("latin-1")

    def _broken(self, error: fastbody.TransferError, expected: int | None) -> None:
        """The body could not be sent whole: close the connection and say why, with counts."""
        self.force_close()
        log_broken(log, error, expected, f"{self.req.method} {self.req.path}", self._settings().timeout)
        # Close at once: whatever the worker does next, the client sees the end now.
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _settings(self) -> Settings:
        return self.settings if self.settings is not None else Settings.of(self.cfg)


_NO_GUARD: AbstractContextManager[object] = nullcontext()  # stateless: one serves every response

_declared = functools.lru_cache(maxsize=1024)(fastbody.framing.Declared)
"""What a head's Content-Length (or its absence) says: one shared, immutable ``Declared`` per
length, cheaper than a new frozen one per response, and the same object each time, which
``framing.for_response``'s remembered answers then find at once."""


def _file_parts(source: object) -> FileParts | None:
    """Parts of a regular file to send from their own offsets: an answer's ``FileParts``, or
    whitenoise's range of a file seen as one."""
    if type(source) in _PLAIN_FILES:  # what open() returns is neither (and is the common case)
        return None
    return source if isinstance(source, FileParts) else sliced_file(source)


_PLAIN_FILES = frozenset({io.BufferedReader, io.FileIO, io.BufferedRandom})


def _send_parts(body: FileParts, writer: fastbody.ResponseWriter) -> None:
    """Each part in turn: literal bytes (multipart boundaries) as they are, file ranges by
    sendfile from their offsets; the last one ends the body."""
    if not body.parts:
        writer.end()
        return
    final = len(body.parts) - 1
    for index, part in enumerate(body.parts):
        if isinstance(part, FileRange):
            writer.send(body.file, offset=part.offset, count=part.count, last=index == final)
        else:
            writer.send(part, last=index == final)


def _pieces_of(pieces: Pieces, writer: fastbody.ResponseWriter) -> Iterator[Piece]:
    """The pieces; an error the iterable raises (a failing upstream) carries the bytes sent."""
    while True:
        try:
            piece = next(pieces.pieces, None)
        except fastbody.TransferError as error:
            error.sent += writer.sent
            raise
        if piece is None:
            return
        yield piece


# Workers

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _upgrade(
    app: WSGIApp,
    heartbeat: AbstractContextManager[object] | None,
    handoff: Handoff | None = None,
    settings: Settings | None = None,
) -> WSGIApp:
    """``app``, with gunicorn's HTTP/1 responses turned into ``FastResponse`` before it runs
    (``settings``: the worker's, given to each), and handoff headers answered when ``handoff``
    says where their files may be."""
    served = app if handoff is None else HandoffMiddleware(app, handoff, log)

    def fastbody_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        response: Any = getattr(start_response, "__self__", None)
        if type(response) is not gunicorn_wsgi.Response:  # HTTP/2's own response class
            return served(environ, start_response)
        response.__class__ = FastResponse
        response.heartbeat = heartbeat
        response.environ = environ
        response.settings = settings
        environ["wsgi.file_wrapper"] = FileWrapper
        body = served(environ, start_response)
        # werkzeug's range of a file wrapper is no file wrapper: gunicorn would iterate it. (A
        # file wrapper is none of werkzeug's, and is not asked: each attribute it lacks costs.)
        ranged = None if isinstance(body, FileWrapper) else werkzeug_range(body, FileWrapper)
        return body if ranged is None else FileWrapper(ranged)

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


OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""accept(2) errors that say the process (or the system) has no room for a connection now."""

ACCEPT_PAUSE = 1.0
"""Seconds a worker out of fds stops accepting, as asyncio does (``ACCEPT_RETRY_DELAY``): the
connections waiting stay in the backlog and are taken once fds are free again."""


class _PausedWhenOutOfFds:
    """Around an accept: out of fds, log it and ``pause`` accepting instead of letting the
    error end the worker; any other error goes on. A class, not a generator: the sync worker's
    every idle accept ends in EAGAIN, which a generator's context would throw through a frame."""

    def __init__(self, pause: Callable[[], None]) -> None:
        self.pause = pause

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> bool:
        if not isinstance(error, OSError) or error.errno not in OUT_OF_FDS:
            return False
        pausing = "fastbody: accept() failed (%s): no new connections for %.0f s"
        log.error(pausing, error.strerror, ACCEPT_PAUSE)
        self.pause()
        return True


class FastSync(SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker with fastbody bodies (``-k egg:fastbody#sync``).

    Out of fds, it waits ``ACCEPT_PAUSE`` and accepts again; gunicorn's own lets the error end
    the worker, resetting the connections in its backlog."""

    wsgi: WSGIApp
    _out_of_fds: _PausedWhenOutOfFds  # made in load_wsgi, before the first accept

    def accept(self, listener: socket.socket) -> None:
        with self._out_of_fds:
            super().accept(listener)

    def _pause_accepting(self) -> None:
        # In steps, telling the arbiter between them: a --timeout under the pause must not get
        # the worker killed for it.
        resume = time.monotonic() + ACCEPT_PAUSE
        while (left := resume - time.monotonic()) > 0:
            self.notify()
            time.sleep(min(left, self.timeout / 2) if self.timeout else left)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self._out_of_fds = _PausedWhenOutOfFds(self._pause_accepting)
        if self.cfg.threads > 1:  # gunicorn swaps only classes named ...SyncWorker for gthread
            log.warning(
                "fastbody: the sync worker handles one request at a time and ignores --threads %d;"
                " use -k egg:fastbody#gthread for threads",
                self.cfg.threads,
            )
        interval = max(min(self.timeout / 4, 1.0), 0.05) if self.timeout else 1.0
        self.wsgi = _upgrade(
            self.wsgi, Heartbeat(self.notify, interval), Handoff.from_environ(), Settings.of(self.cfg)
        )


class FastThread(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker with fastbody bodies (``-k egg:fastbody#gthread``).

    Its main thread notifies the arbiter whatever the request threads are doing. Out of fds,
    it stops accepting for ``ACCEPT_PAUSE`` while it goes on serving the connections it has;
    gunicorn's own lets the error end the worker, resetting every connection it holds."""

    wsgi: WSGIApp
    _accept_again_at = 0.0  # monotonic time before which accepting stays off
    _out_of_fds: _PausedWhenOutOfFds  # made in load_wsgi, before the first accept

    def accept(self, listener: socket.socket) -> None:
        with self._out_of_fds:
            super().accept(listener)

    def _pause_accepting(self) -> None:
        self._accept_again_at = time.monotonic() + ACCEPT_PAUSE
        self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        # The main loop turns accepting back on whenever it has room for connections: not
        # before the pause is over (its poll wakes at least once a second to check).
        if not enabled or time.monotonic() >= self._accept_again_at:
            super().set_accept_enabled(enabled)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self._out_of_fds = _PausedWhenOutOfFds(self._pause_accepting)
        self.wsgi = _upgrade(self.wsgi, None, Handoff.from_environ(), Settings.of(self.cfg))


def __getattr__(name: str) -> Any:
    """``fastbody.integrations.gunicorn.FastUvicornWorker``, imported only when asked for (it
    needs uvicorn and uvicorn-worker, which the WSGI workers do not)."""
    if name == "FastUvicornWorker":
        from .uvicorn.worker import FastUvicornWorker

        return FastUvicornWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
