"""uvicorn protocols that send response bodies by sendfile and splice (ASGI zero-copy extensions).

    uvicorn app:app --http fastbody.integrations.uvicorn:AutoProtocol

``H11Protocol``, ``HttpToolsProtocol`` and ``AutoProtocol`` (httptools when importable, else h11)
are uvicorn's own protocols with one change: each request's cycle is uvicorn's
``RequestResponseCycle`` with a ``send`` that also understands three messages, advertised in
``scope["extensions"]``:

- ``http.response.pathsend`` (ASGI): ``{"path": str}``, the whole file; Starlette's ``FileResponse``
  and ``StaticFiles`` send it by themselves when it is advertised.
- ``http.response.zerocopysend`` (ASGI): ``{"file", "offset", "count", "more_body"}``.
- ``fastbody.response.splicesend`` (fastbody's): ``{"source", "count", "more_body"}`` for a socket
  or a pipe (see the README for the fields).

Their bytes go by ``fastbody.atransfer`` on the connection's socket, framed by uvicorn's own
rules (h11's ``send_with_data_passthrough`` keeps h11's byte accounting right; with httptools
uvicorn's chunked/Content-Length state). Everything else — keep-alive, pipelining, flow control,
disconnects, logging — is uvicorn's code, untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import stat
from abc import abstractmethod
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.utils import is_ssl

import fastbody

from .asgi import EXTENSIONS, PATHSEND, SPLICESEND, ZEROCOPYSEND
from .failures import log_broken

try:
    from uvicorn.protocols.http import httptools_impl
except ImportError:  # httptools is not installed: AutoProtocol is the h11 one
    httptools_impl = None  # type: ignore[assignment]

__all__ = [
    "EXTENSIONS",
    "PATHSEND",
    "SPLICESEND",
    "ZEROCOPYSEND",
    "AutoProtocol",
    "H11Protocol",
    "HttpToolsProtocol",
]


SEND_TIMEOUT = float(os.environ.get("FASTBODY_SEND_TIMEOUT", "60")) or None
"""Seconds a zero-copy body may make no progress (a client that stopped reading) before the
connection is cut; ``FASTBODY_SEND_TIMEOUT``, 0 for none. uvicorn itself has no send timeout."""

COPY_CHUNK = 256 << 10
"""Bytes read at a time when the bytes must pass through the transport (TLS)."""

log = logging.getLogger("uvicorn.error")

Message = dict[str, Any]


# Pure decisions


def declared_length(headers: Any) -> int | None:
    """The Content-Length the app declared in ``http.response.start`` headers, if any."""
    for name, value in headers:
        if bytes(name).lower() == b"content-length":
            return int(value)
    return None


def holds_start(status: int, method: str, headers: Any) -> bool:
    """Whether to hold the head back until the first body message: only a head with no length
    and no Transfer-Encoding, which a zero-copy body of known length can still give one."""
    if method == "HEAD" or status in (204, 304) or status < 200:
        return False
    fields = {bytes(name).lower(): bytes(value).lower() for name, value in headers}
    if fields.get(b"content-type", b"").startswith(b"text/event-stream"):
        return False  # an event stream's head goes out at once, whenever its first event comes
    return not fields.keys() & {b"content-length", b"transfer-encoding"}


def with_content_length(start: Message, length: int) -> Message:
    return {**start, "headers": [*start.get("headers", []), (b"content-length", b"%d" % length)]}


@dataclass
class ZeroCopyBody:
    """What one zero-copy message asks to send."""

    source: Any
    offset: int | None  # files: where to start; None: the file's position
    count: int | None  # None: to the end of the source
    more_body: bool
    length: int | None  # the bytes it will send, when known before sending


@contextmanager
def opened_body(message: Message) -> Iterator[ZeroCopyBody]:
    """The body a zero-copy message names; a path it names is opened here and closed after."""
    kind = message["type"]
    if kind == PATHSEND:
        with open(message["path"], "rb") as file:
            yield ZeroCopyBody(file, 0, None, False, os.fstat(file.fileno()).st_size)
        return
    source = message["file"] if kind == ZEROCOPYSEND else message["source"]
    offset = message.get("offset") if kind == ZEROCOPYSEND else None
    count = message.get("count")
    if count is not None and count < 0:
        raise ValueError(f"count must be None or >= 0, not {count}")
    yield ZeroCopyBody(
        source, offset, count, bool(message.get("more_body", False)), _length(source, offset, count)
    )


def _length(source: Any, offset: int | None, count: int | None) -> int | None:
    """``count``, or what a regular file has left from ``offset`` (or its position)."""
    if count is not None:
        return count
    fd = source.fileno()
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return None
    start = offset if offset is not None else _position(source, fd)
    return max(os.fstat(fd).st_size - start, 0)


def _position(source: Any, fd: int) -> int:
    return int(source.tell()) if hasattr(source, "tell") else os.lseek(fd, 0, os.SEEK_CUR)


class _Placeholder:
    """Stands for a chunk of body bytes in h11's framing: h11 needs only its length."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


# The cycle


class _ZeroCopyCycle:
    """Mixed into uvicorn's ``RequestResponseCycle`` (instances get this class when created).

    Everything kept here has a class default: uvicorn's ``__init__`` ran, not ours.
    """

    # uvicorn's cycle attributes this code uses
    scope: Any
    transport: asyncio.Transport
    flow: Any
    disconnected: bool
    response_started: bool
    response_complete: bool

    send_timeout: float | None = SEND_TIMEOUT
    _held_start: Message | None = None  # a head waiting to learn its body's length
    _declared: int | None = None  # Content-Length bytes still to send, when declared
    _transfer: asyncio.Future[int] | None = None

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started:
            await self._start(message)
        elif kind in EXTENSIONS:
            await self._send_zero_copy(message)
        else:
            await self._flush_start(None)
            if kind == "http.response.body" and self._declared is not None:
                self._declared -= len(message.get("body", b""))
            await super().send(message)  # type: ignore[misc]

    def connection_lost(self) -> None:
        """The client went away: a transfer in progress stops (it works on a dup of the socket)."""
        if self._transfer is not None:
            self._transfer.cancel()

    async def _start(self, message: Message) -> None:
        if self._held_start is not None:
            # A second start can only be uvicorn's own 500 after the app failed: it replaces ours.
            self._held_start = None
        headers = message.get("headers", [])
        self._declared = declared_length(headers)
        if holds_start(message["status"], self.scope["method"], headers):
            self._held_start = message
        else:
            await super().send(message)  # type: ignore[misc]

    async def _flush_start(self, length: int | None) -> None:
        start, self._held_start = self._held_start, None
        if start is not None:
            if length is not None:
                start = with_content_length(start, length)
                self._declared = length
            await super().send(start)  # type: ignore[misc]

    async def _send_zero_copy(self, message: Message) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started and self._held_start is None:
            raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
            )
        with opened_body(message) as body:
            ends = not body.more_body
            await self._flush_start(body.length if ends else None)
            sends_bytes = self.scope["method"] != "HEAD" and body.length != 0
            if sends_bytes and not await self._send_body(body):
                return  # the connection is gone: nothing more to frame
        await super().send({"type": "http.response.body", "body": b"", "more_body": body.more_body})  # type: ignore[misc]

    async def _send_body(self, body: ZeroCopyBody) -> bool:
        """Send the body's bytes; False when the connection was closed instead."""
        length = body.length
        if length is None and self._declared is not None:
            length = self._declared  # a stream under the app's Content-Length: exactly that
        try:
            if is_ssl(self.transport):
                await self._copy_through_transport(body, length)
            elif length is not None:
                await self._send_piece(body.source, body.offset, length)
            else:
                await self._send_pieces(body.source)
        except fastbody.TransferError as error:
            self._broken(error, length)
            if isinstance(error, fastbody.IncompleteTransfer) or not isinstance(
                error, fastbody.PeerClosedError | fastbody.TransferTimeout
            ):
                raise
            return False
        return True

    async def _send_pieces(self, source: Any) -> None:
        """A stream of unknown length: each piece is what the source has ready (its size line,
        if chunked, is written first), moved by splice."""
        sent = 0
        if held := fastbody.buffered(source):
            await super().send({"type": "http.response.body", "body": held, "more_body": True})  # type: ignore[misc]
            sent += len(held)
        try:
            while size := await self._until_lost(fastbody.apending(source, self.send_timeout)):
                await self._send_piece(source, None, size)
                sent += size
        except fastbody.TransferError as error:
            error.sent += sent
            raise

    async def _send_piece(self, source: Any, offset: int | None, count: int) -> None:
        if self.disconnected:  # gone while we waited for the source: h11 can frame no more
            raise fastbody.PeerClosedError.make(None, "the client went away", 0)
        prefix, suffix = self._frame(count)
        if prefix:
            self.transport.write(prefix)
        await self._drain_transport()
        sent = await self._atransfer(source, offset, count)
        if sent < count:  # the engine raises for this; a guard against ever framing short
            raise fastbody.IncompleteTransfer.short(sent, count)
        if self._declared is not None:
            self._declared -= count
        if suffix:
            self.transport.write(suffix)

    @abstractmethod
    def _frame(self, count: int) -> tuple[bytes, bytes]:
        """The framing bytes before and after ``count`` body bytes (by the server's own rules):
        ``H11Cycle`` asks h11, ``HttpToolsCycle`` follows uvicorn's own state."""

    async def _drain_transport(self) -> None:
        """Wait until the transport has written all it holds: our bytes must come after them."""
        transport = self.transport
        if not (buffered := transport.get_write_buffer_size()):
            return
        log.debug("fastbody: %d bytes wait in the transport before the zero-copy body", buffered)
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)  # pause_writing now, resume_writing at empty
        try:
            await self.flow.drain()
        finally:
            transport.set_write_buffer_limits(high=high, low=low)
        if self.disconnected:
            raise fastbody.PeerClosedError.make(None, "the client went away", 0)

    async def _atransfer(self, source: Any, offset: int | None, count: int) -> int:
        sock = self.transport.get_extra_info("socket")
        return await self._until_lost(
            fastbody.atransfer(sock, source, offset=offset, count=count, timeout=self.send_timeout)
        )

    async def _until_lost(self, work: Coroutine[Any, Any, int]) -> int:
        """Run ``work`` (a transfer, or a wait for the source) so that the client going away
        cancels it at once: neither would notice by itself (both watch dups, or the source)."""
        self._transfer = asyncio.ensure_future(work)
        try:
            return await self._transfer
        except asyncio.CancelledError:
            if self.disconnected and not _cancelling():
                raise fastbody.PeerClosedError.make(None, "the client went away", 0) from None
            raise
        finally:
            self._transfer = None

    async def _copy_through_transport(self, body: ZeroCopyBody, length: int | None) -> None:
        """TLS: the transport owns the encryption, so the bytes go through it as body messages."""
        loop = asyncio.get_running_loop()
        fd, offset, left = body.source.fileno(), body.offset, length
        if offset is None and stat.S_ISREG(os.fstat(fd).st_mode):
            offset = _position(body.source, fd)
        sent = 0
        if offset is None and (held := fastbody.buffered(body.source)):
            held = held if left is None else held[:left]
            await super().send({"type": "http.response.body", "body": held, "more_body": True})  # type: ignore[misc]
            sent, left = len(held), None if left is None else left - len(held)
            if self._declared is not None:
                self._declared -= len(held)
        while left is None or left > 0:
            if self.disconnected:  # uvicorn drops body messages to a closed connection silently
                raise fastbody.PeerClosedError.make(None, "the client went away", sent)
            want = COPY_CHUNK if left is None else min(COPY_CHUNK, left)
            data = await loop.run_in_executor(None, _read, fd, want, offset, self.send_timeout)
            if not data:
                if left:
                    raise fastbody.IncompleteTransfer.short(sent, sent + left)
                break
            await super().send({"type": "http.response.body", "body": data, "more_body": True})  # type: ignore[misc]
            if self._declared is not None:
                self._declared -= len(data)
            sent += len(data)
            offset = None if offset is None else offset + len(data)
            left = None if left is None else left - len(data)
        if offset is not None and body.offset is None and hasattr(body.source, "seek"):
            body.source.seek(offset)  # as sendfile would leave it

    def _broken(self, error: fastbody.TransferError, expected: int | None) -> None:
        """The body could not be sent whole: close the connection at once and say why."""
        self.disconnected = True  # later messages of this response are dropped, as uvicorn does
        self.transport.abort()
        request = f"{self.scope['method']} {self.scope['path']}"
        log_broken(log, error, expected, request, self.send_timeout)


def _read(fd: int, size: int, offset: int | None, timeout: float | None) -> bytes:
    """Read up to ``size`` bytes in a worker thread (the TLS fallback), waiting at most ``timeout``."""
    if offset is not None:
        return os.pread(fd, size, offset)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        if not poller.poll(None if timeout is None else timeout * 1000):
            raise fastbody.TransferTimeout.make(None, f"source made no progress for {timeout} seconds", 0)
        with suppress(BlockingIOError):  # a non-blocking source someone else read first
            return os.read(fd, size)


def _cancelling() -> bool:
    """Whether our own task is being cancelled (Python 3.11+ can tell; 3.10 cannot: no)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


class H11Cycle(_ZeroCopyCycle, h11_impl.RequestResponseCycle):
    conn: h11.Connection

    def _frame(self, count: int) -> tuple[bytes, bytes]:
        placeholder = _Placeholder(count)
        data = h11.Data(data=placeholder)  # type: ignore[arg-type]
        pieces: list[Any] = list(self.conn.send_with_data_passthrough(data) or [])
        at = next(index for index, piece in enumerate(pieces) if piece is placeholder)
        return b"".join(pieces[:at]), b"".join(pieces[at + 1 :])


# The protocols


class _CycleSlot:
    """The protocol's ``cycle`` attribute: each cycle uvicorn creates becomes a zero-copy one
    and its scope advertises the extensions — whichever code path of uvicorn created it."""

    def __init__(self, cycle_class: type) -> None:
        self.cycle_class = cycle_class

    def __get__(self, protocol: Any, owner: type | None = None) -> Any:
        return protocol.__dict__.get("_fastbody_cycle") if protocol is not None else self

    def __set__(self, protocol: Any, cycle: Any) -> None:
        if cycle is not None and not isinstance(cycle, _ZeroCopyCycle):
            cycle.__class__ = self.cycle_class
            extensions = cycle.scope.setdefault("extensions", {})
            for name in EXTENSIONS:
                extensions[name] = {}
        protocol.__dict__["_fastbody_cycle"] = cycle


class H11Protocol(h11_impl.H11Protocol):
    cycle = _CycleSlot(H11Cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.cycle is not None:
            self.cycle.connection_lost()


if httptools_impl is not None:

    class HttpToolsCycle(_ZeroCopyCycle, httptools_impl.RequestResponseCycle):
        chunked_encoding: bool | None
        expected_content_length: int

        def _frame(self, count: int) -> tuple[bytes, bytes]:
            if self.chunked_encoding:
                return b"%x\r\n" % count, b"\r\n"
            if count > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= count
            return b"", b""

    class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):
        cycle = _CycleSlot(HttpToolsCycle)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            if self.cycle is not None:
                self.cycle.connection_lost()

    AutoProtocol: type[asyncio.Protocol] = HttpToolsProtocol
else:
    HttpToolsProtocol = None  # type: ignore[misc]
    AutoProtocol = H11Protocol
