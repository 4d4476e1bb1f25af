"""The ``send`` an app gets from fastbody's uvicorn protocols: uvicorn's own cycle ``send``,
wrapped (not replaced) so that it also takes the zero-copy messages.

``ZeroCopySend`` holds a reference to uvicorn's ``RequestResponseCycle`` and passes every
ordinary message to the cycle's own ``send``. For a zero-copy message it learns the source
(``fastbody.describe``), gives a held head its Content-Length, drains the transport, and hands
the body to ``fastbody.ResponseWriter`` on the connection's socket with a ``BodyWriter`` that
frames by uvicorn's own state: h11 counts and frames through ``send_with_data_passthrough``;
with httptools, uvicorn's ``chunked_encoding``/``expected_content_length`` decide and the
engine's ``ChunkedWriter`` writes the size lines.

Logs follow uvicorn's: when uvicorn's access log is on, each response ends with a line on
``uvicorn.error`` that repeats uvicorn's access line with the body bytes sent and the path that
moved them; a body that could not be sent whole is one line (``failures.log_broken``), and the
error ``send`` raised for it is not logged again, with a traceback, when the app lets it out.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import h11
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string, is_ssl

import fastbody
from fastbody.framing import BodyWriter, ChunkedWriter, CloseWriter, LengthWriter

from ..asgi import EXTENSIONS, PATHSEND, ZEROCOPYSEND
from ..failures import blame, log_broken, outcome, paths_label

SEND_TIMEOUT = fastbody.config.current().send_timeout
"""The send timeout in force when this module was imported (``FASTBODY_SEND_TIMEOUT``), kept
for code that imported it; each ``ZeroCopySend`` reads the current one (``fastbody.configure``)."""

TLS_CHUNK = 256 << 10
"""Bytes per body message when the bytes must pass through the transport (TLS)."""

log = logging.getLogger("uvicorn.error")

_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11+

T = TypeVar("T")
Message = dict[str, Any]
Headers = list[tuple[bytes, bytes]]


# Pure decisions


def declared_length(headers: Headers) -> int | None:
    """The Content-Length the app declared in ``http.response.start`` headers, if any. The
    rest of the app's framing fields are uvicorn's to judge, as they always were."""
    for name, value in headers:
        if _latin1(name).lower() == b"content-length":
            return fastbody.framing.content_length(value)
    return None


def _latin1(text: bytes | str) -> bytes:
    """A header name or value as bytes (ASGI says bytes; uvicorn's h11 path takes str too)."""
    return text.encode("latin-1") if isinstance(text, str) else bytes(text)


def holds_start(status: int, method: str, headers: Headers) -> bool:
    """Whether to hold the head back until the first body message: only a head with no length
    and no Transfer-Encoding, which a zero-copy body of known length can still give one."""
    if method == "HEAD" or status in (204, 304) or status < 200:
        return False
    fields = {_latin1(name).lower(): _latin1(value).lower() for name, value in headers}
    if fields.get(b"content-type", b"").startswith(b"text/event-stream"):
        return False  # an event stream's head goes out at once, whenever its first event comes
    return not fields.keys() & {b"content-length", b"transfer-encoding"}


def with_content_length(start: Message, length: int) -> Message:
    return {**start, "headers": [*start["headers"], (b"content-length", b"%d" % length)]}


@contextmanager
def described(message: Message) -> Iterator[tuple[fastbody.Source, bool]]:
    """The source a zero-copy message names and whether more body follows; a path it names is
    opened here and closed after. A count past a file's end is refused here (``ValueError``),
    before any head promises it."""
    kind = message["type"]
    if kind == PATHSEND:
        with fastbody.describe(message["path"], offset=0) as source:
            yield source, False
        return
    body = message["file"] if kind == ZEROCOPYSEND else message["source"]
    offset = message.get("offset") if kind == ZEROCOPYSEND else None
    yield fastbody.describe(body, offset=offset, count=message.get("count")), bool(message.get("more_body"))


# Framing by uvicorn's own state


class _Placeholder:
    """Stands for a chunk of body bytes in h11's framing: h11 needs only its length."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


class H11Framing:
    """Frames pieces the way h11 does for this response, and keeps h11's byte count right:
    h11 writes the bytes around each piece (``send_with_data_passthrough``)."""

    def __init__(self, conn: h11.Connection, own: BodyWriter) -> None:
        self.conn = conn
        self.own = own  # the same framing as ours, for what h11 will not say (length left)

    @property
    def chunked(self) -> bool:
        return self.own.chunked

    @property
    def remaining(self) -> int | None:
        return self.own.remaining

    def piece(self, size: int) -> tuple[bytes, bytes]:
        self.own.piece(size)
        placeholder = _Placeholder(size)
        data = h11.Data(data=placeholder)  # type: ignore[arg-type]
        pieces: list[Any] = list(self.conn.send_with_data_passthrough(data) or [])
        at = next(index for index, piece in enumerate(pieces) if piece is placeholder)
        return b"".join(pieces[:at]), b"".join(pieces[at + 1 :])

    def end(self) -> bytes:
        return b""  # uvicorn's own last body message ends it


class HttpToolsFraming:
    """Frames pieces by uvicorn's httptools cycle state: chunk lines from the engine's
    ``ChunkedWriter``, Content-Length counted down in the cycle itself."""

    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle
        self.chunks = ChunkedWriter()

    @property
    def chunked(self) -> bool:
        return bool(self.cycle.chunked_encoding)

    @property
    def remaining(self) -> int | None:
        return None if self.chunked else int(self.cycle.expected_content_length)

    def piece(self, size: int) -> tuple[bytes, bytes]:
        if self.chunked:
            return self.chunks.piece(size)
        if size > self.cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        self.cycle.expected_content_length -= size
        return b"", b""

    def end(self) -> bytes:
        return b""  # uvicorn's own last body message ends it


def own_framing(declared: int | None, chunked: bool) -> BodyWriter:
    if declared is not None:
        return LengthWriter(declared)
    return ChunkedWriter() if chunked else CloseWriter()


# The send


class ZeroCopySend:
    """One request's ``send``: uvicorn's cycle's, plus ``pathsend``, ``zerocopysend`` and
    ``fastbody.response.splicesend``. A head without length is held until the first body
    message (a zero-copy body of known length then gives it one); whatever the app does, a held
    head goes out as uvicorn would have sent it (``release``)."""

    @property
    def send_timeout(self) -> float | None:
        """Seconds a zero-copy body may make no progress (a client that stopped reading) before
        the connection is cut: ``fastbody.config`` (``FASTBODY_SEND_TIMEOUT``, 0 for none;
        ``fastbody.configure(send_timeout=...)``). uvicorn itself has no send timeout."""
        return fastbody.config.current().send_timeout

    def __init__(self, cycle: Any) -> None:
        self.cycle = cycle
        self.held: Message | None = None
        self.declared: int | None = None  # Content-Length bytes still to send, when declared
        self.started = False  # the app sent its head (which uvicorn drops if the client has gone)
        self.transfer: asyncio.Future[Any] | None = None
        self.status = 0
        self.sent = 0  # body bytes sent, by uvicorn or the engine
        self.moved: dict[str, int] = {}  # them by the path that moved them, first used first
        self.engine = False  # the engine sent some of it (a zero-copy message): a response it reports
        self.ended = False  # the response's end is told (its access line, the counters)

    async def __call__(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif kind in EXTENSIONS:
            await self._send_zero_copy(message)
        else:
            await self.release()
            size = len(message.get("body", b"")) if kind == "http.response.body" else 0
            if self.declared is not None:
                self.declared -= size
            if size and not self.cycle.disconnected and self.cycle.scope["method"] != "HEAD":
                self._count({"copy": size})  # (uvicorn drops body messages to a closed connection)
            await self.cycle.send(message)
            if self.cycle.response_complete:
                self._end(None)

    async def release(self, length: int | None = None) -> None:
        """Send the held head, if any (with ``Content-Length: length`` when known)."""
        start, self.held = self.held, None
        if start is not None:
            if length is not None:
                start = with_content_length(start, length)
                self.declared = length
            await self.cycle.send(start)

    def connection_lost(self) -> None:
        """The client went away: a transfer in progress stops (it works on a dup of the socket)."""
        if self.transfer is not None:
            self.transfer.cancel()

    async def _start(self, message: Message) -> None:
        if self.held is not None or self.cycle.response_started:
            await self.release()
            await self.cycle.send(message)  # a second start: uvicorn refuses it as it always does
            return
        self.started = True
        self.status = message["status"]
        # ASGI headers may be any iterable: read them once, here.
        message = {**message, "headers": list(message.get("headers", []))}
        self.declared = declared_length(message["headers"])
        if holds_start(message["status"], self.cycle.scope["method"], message["headers"]):
            self.held = message
        else:
            await self.cycle.send(message)

    async def _send_zero_copy(self, message: Message) -> None:
        cycle = self.cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if not self.started:
            raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
        if cycle.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
            )
        self.engine = True
        with self._refused_before_head(), described(message) as (source, more_body):
            if cycle.disconnected:
                self._gone(
                    message, self._broken(fastbody.PeerClosedError.make(None, "the client went away", 0))
                )
                return
            await self.release(None if more_body else source.length)
            if cycle.scope["method"] != "HEAD":
                try:
                    sent = await self._send_body(source) if source.length != 0 else 0
                    if not more_body and self.declared:
                        # The last body message leaves the Content-Length unfilled (a file that
                        # shrank after its head was made): never a short body passed off.
                        raise fastbody.IncompleteTransfer.short(sent, sent + self.declared)
                except fastbody.TransferError as error:
                    self._gone(message, self._broken(error, source))
                    return
                except BaseException as error:
                    # Cancelled (or failed) part-way: uvicorn's framing counted the whole piece,
                    # so the connection cannot carry another byte of this response, nor another.
                    cycle.disconnected = True
                    cycle.transport.abort()
                    self._end(error)
                    raise
        await cycle.send({"type": "http.response.body", "body": b"", "more_body": more_body})
        if cycle.response_complete:
            self._end(None)

    @contextmanager
    def _refused_before_head(self) -> Iterator[None]:
        """A message refused while the head is still held (a count past a file's end, a source
        that cannot be sent) drops the head: uvicorn then answers 500 rather than a head that
        promises what cannot follow."""
        try:
            yield
        except (ValueError, TypeError):
            self.held = None
            raise

    def _gone(self, message: Message, error: fastbody.TransferError) -> None:
        """A zero-copy body that could not be sent whole: the app learns it from ``send``
        (with ``sent``, the body bytes that went out), as ASGI 2.4 says of a closed connection;
        ``pathsend`` ends the response, so its sender is told only by a short body."""
        if message["type"] != PATHSEND or isinstance(error, fastbody.IncompleteTransfer):
            raise error

    async def _send_body(self, source: fastbody.Source) -> int:
        """The body bytes of ``source`` sent on the connection (all of them, or it raises)."""
        if is_ssl(self.cycle.transport):
            return await self._copy_through_transport(source)
        framing = self._framing()
        if source.length is None and framing.remaining is not None:  # a stream under a Content-Length
            source = fastbody.Source(source.body, framing.remaining)
        await self._drain_transport()
        if self.cycle.disconnected:  # gone while its head was being sent
            raise fastbody.PeerClosedError.make(None, "the client went away", 0)
        sock = self.cycle.transport.get_extra_info("socket")
        # reports=False: this response may span several writers and uvicorn's own messages; its
        # end (and how it ended, blamed on the right side) is told once, by ``_end``.
        writer = fastbody.ResponseWriter(sock, framing, timeout=self.send_timeout, reports=False)
        try:
            return await self._until_lost(writer.asend(source), lambda: writer.sent)
        finally:
            self._count(writer.paths)  # what really moved them, a fallback to copy included
            if self.declared is not None:
                self.declared -= writer.sent

    def _framing(self) -> BodyWriter:
        cycle = self.cycle
        conn = getattr(cycle, "conn", None)
        if isinstance(conn, h11.Connection):
            chunked = conn.their_http_version == b"1.1" and self.declared is None
            return H11Framing(conn, own_framing(self.declared, chunked))
        return HttpToolsFraming(cycle)

    async def _drain_transport(self) -> None:
        """Wait until the transport has written all it holds: our bytes must come after them."""
        transport = self.cycle.transport
        if not (buffered := transport.get_write_buffer_size()):
            return
        log.debug("fastbody: %d bytes wait in the transport before the zero-copy body", buffered)
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)  # pause_writing now, resume_writing at empty
        try:
            await self.cycle.flow.drain()
        finally:
            transport.set_write_buffer_limits(high=high, low=low)
        if self.cycle.disconnected:
            raise fastbody.PeerClosedError.make(None, "the client went away", 0)

    async def _until_lost(self, work: Coroutine[Any, Any, T], sent: Callable[[], int] = lambda: 0) -> T:
        """Run ``work`` so that the client going away cancels it at once: a transfer watches dups
        of the sockets and would not notice by itself. ``sent``: the bytes sent when it did."""
        transfer: asyncio.Future[T] = asyncio.ensure_future(work)
        self.transfer = transfer
        try:
            return await transfer
        except asyncio.CancelledError:
            if self.cycle.disconnected and not _cancelling():
                raise fastbody.PeerClosedError.make(None, "the client went away", sent()) from None
            raise
        finally:
            self.transfer = None

    async def _copy_through_transport(self, source: fastbody.Source) -> int:
        """TLS: the transport owns the encryption, so the engine reads the bytes and they go
        through it as body messages."""
        if source.length is None and self.declared is not None:
            source = fastbody.Source(source.body, self.declared)
        sent = 0
        chunks = fastbody.achunks(source, size=TLS_CHUNK, timeout=self.send_timeout)
        try:
            while True:
                try:
                    chunk = await self._until_lost(_next(chunks), partial(int, sent))
                except StopAsyncIteration:  # (its errors count what it handed over: what was sent)
                    return sent
                if self.cycle.disconnected:  # uvicorn drops body messages to a closed connection
                    raise fastbody.PeerClosedError.make(None, "the client went away", sent)
                await self.cycle.send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
                self._count({"copy": len(chunk)})  # (counted under copy by achunks too)
                if self.declared is not None:
                    self.declared -= len(chunk)
        finally:
            await chunks.aclose()

    def _broken(
        self, error: fastbody.TransferError, source: fastbody.Source | None = None
    ) -> fastbody.TransferError:
        """The body could not be sent whole: close the connection at once and say why, in one
        line, naming the side that failed (``failures.blame``); the error to raise to the app,
        which uvicorn will not log again if the app lets it out."""
        cycle = self.cycle
        if source is not None and not cycle.disconnected:  # (gone: the transport saw the client leave)
            error = blame(error, source, cycle.transport.get_extra_info("socket"))
        cycle.disconnected = True  # later messages of this response are dropped, as uvicorn does
        cycle.transport.abort()
        request = f"{cycle.scope['method']} {cycle.scope['path']}"
        expected = None if self.declared is None else error.sent + self.declared
        log_broken(log, error, expected, request, self.send_timeout)
        self._end(error)
        logger = cycle.logger
        if not isinstance(logger, _ReportedErrors):
            logger = cycle.logger = _ReportedErrors(logger)
        logger.reported.append(error)
        return error

    def _count(self, moved: dict[str, int]) -> None:
        """Body bytes that went out, by the path that moved them."""
        for path, count in moved.items():
            self.moved[path] = self.moved.get(path, 0) + count
            self.sent += count

    def _end(self, error: BaseException | None) -> None:
        """The response ended (``error``: how it broke, blamed on its side): told once, to the
        counters' subscribers when the engine sent some of it, and in the access line."""
        if self.ended:
            return
        self.ended = True
        if self.engine:
            fastbody.counters.response_ended(self.moved, outcome(error))
        self._log_access()

    def _log_access(self) -> None:
        """The response's line beside uvicorn's access line (which uvicorn writes when the head
        goes, before any byte of the body): the same fields, then the body bytes sent and the
        paths that moved them. Written when uvicorn's access log is on (not
        ``--no-access-log``, and ``uvicorn.access`` enabled for INFO)."""
        cycle = self.cycle
        if not (cycle.access_log and cycle.access_logger.isEnabledFor(logging.INFO)):
            return
        scope, paths = cycle.scope, paths_label(self.moved)
        log.info(
            'fastbody: %s - "%s %s HTTP/%s" %d %d bytes%s',
            get_client_addr(scope),
            scope["method"],
            get_path_with_query_string(scope),
            scope["http_version"],
            self.status,
            self.sent,
            "" if paths == "-" else f" by {paths}",
            extra={"fastbody_bytes": self.sent, "fastbody_path": paths},
        )


class _ReportedErrors:
    """A cycle's error logger once one of its bodies broke (``cycle.logger``, which uvicorn's
    ``run_asgi`` uses): the error ``send`` raised for that body was logged in one line already,
    so when the app lets it out, uvicorn's "Exception in ASGI application" and its traceback
    are not written. Everything else goes to uvicorn's logger as it was."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.reported: list[BaseException] = []

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if not _only(kwargs.get("exc_info"), self.reported):
            self.logger.error(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)


def _only(error: object, reported: list[BaseException]) -> bool:
    """Whether ``error`` is one of ``reported`` (or a group of nothing else, as task groups raise)."""
    if isinstance(error, _GROUP):
        return all(_only(inner, reported) for inner in error.exceptions)
    return any(error is known for known in reported)


async def _next(chunks: AsyncIterator[bytes]) -> bytes:
    return await chunks.__anext__()


def _cancelling() -> bool:
    """Whether our own task is being cancelled (Python 3.11+ can tell; 3.10 cannot: no)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False
