"""One HTTP/1 response body on one connection: the head, the framing, the pieces, the count.

Go's ``(*response).ReadFrom`` in Python: the caller (a server integration) has decided the head
and the framing (``fastbody.framing``); the writer sends the head with the body's first bytes,
moves every piece by sendfile, splice or copy, writes the framing bytes around each piece (a
chunk's size line before it, its CRLF after, the last chunk at the end), counts every body byte
in ``stats()`` and returns the exact count, or raises a ``TransferError`` carrying it.

    writer = ResponseWriter(sock, framing, head=head_bytes, timeout=30)
    writer.send(open("big.iso", "rb"), last=True)    # or: await writer.asend(...)
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

from .drivers import run_async, run_blocking
from .errors import IncompleteTransfer
from .framing import BodyWriter, Framing, writer_for
from .pipes import PipePool, default_pool
from .pump import Progress, Pump, Request, pump
from .transfer import destination, source_body


class ResponseWriter:
    """The body of one response, sent piece by piece on ``sock``.

    ``framing``: a ``Framing`` decided by ``fastbody.framing.for_response`` (or any
    ``BodyWriter``, such as one that asks h11). ``head``: bytes that go before the first body
    byte (the response head, when the integration has not sent it itself). ``timeout``: the
    seconds a piece may make no progress (nothing read, nothing written) before
    ``TransferTimeout``. ``kernel=False``: copy every byte (no sendfile, no splice).
    ``sent``: the body bytes sent so far, framing bytes not counted.
    """

    def __init__(
        self,
        sock: socket.socket,
        framing: Framing | BodyWriter,
        *,
        head: bytes = b"",
        timeout: float | None = None,
        kernel: bool = True,
        pool: PipePool = default_pool,
    ) -> None:
        self.sock = sock
        self.framing = writer_for(framing) if isinstance(framing, Framing) else framing
        self.pending = head
        self.timeout = timeout
        self.kernel = kernel
        self.pool = pool
        self.ended = False
        self._done = 0  # body bytes of the pieces that finished
        self._piece: Progress | None = None  # the piece under way (or the last that failed)

    @property
    def sent(self) -> int:
        """Body bytes sent so far (framing bytes not counted), a piece cut short included."""
        return self._done + (self._piece.sent if self._piece is not None else 0)

    def send(
        self, source: object, *, offset: int | None = None, count: int | None = None, last: bool = False
    ) -> int:
        """Send ``source`` (``count`` bytes, or to its end) as the next piece of the body, on a
        blocking socket; ``last``: it ends the body. Returns the piece's body bytes."""
        return run_blocking(
            self.step(source, offset=offset, count=count, last=last, blocking=True), self.timeout
        )

    async def asend(
        self, source: object, *, offset: int | None = None, count: int | None = None, last: bool = False
    ) -> int:
        """``send`` on the running asyncio loop, for a non-blocking socket it does not own."""
        if self.sock.gettimeout() != 0.0:
            raise ValueError("asend() needs a non-blocking socket (sock.setblocking(False))")
        step = self.step(source, offset=offset, count=count, last=last, blocking=False)
        return await run_async(step, self.timeout)

    def step(
        self,
        source: object,
        *,
        offset: int | None = None,
        count: int | None = None,
        last: bool = False,
        blocking: bool,
    ) -> Generator[Request, Any, int]:
        """``send`` as an engine step, for a caller that composes it with steps of its own (a
        proxy's request, then its reading of the answer) and runs the whole on a driver
        (``fastbody.heads.run``/``arun``; ``blocking``: which one)."""
        try:
            sent = yield from self._pump(source, offset, count, last, blocking)
        except BaseException as error:
            self._count_whole(error)
            raise
        return self._sent(sent)

    def end(self) -> None:
        """End the body (a chunked body's last chunk) and send what framing is still pending."""
        self.send(b"", last=True)

    async def aend(self) -> None:
        await self.asend(b"", last=True)

    def _pump(
        self, source: object, offset: int | None, count: int | None, last: bool, blocking: bool
    ) -> Pump:
        if self.ended:
            raise ValueError("this response's body has ended")
        body, count = source_body(source, offset, count, blocking=blocking)
        dst = destination(self.sock)
        dst.pending, self.pending = self.pending, b""
        self.ended = last
        self._piece = Progress(count)
        return pump(
            dst,
            body,
            count,
            self.pool,
            timeout=self.timeout,
            in_kernel=blocking,
            framing=self.framing,
            last=last,
            kernel=self.kernel,
            progress=self._piece,
        )

    def _sent(self, count: int) -> int:
        self._done += count
        self._piece = None
        return count

    def _count_whole(self, error: BaseException) -> None:
        """Make ``error`` count the whole body's bytes, not just this piece's."""
        self.ended = True  # a failed piece leaves the framing broken: nothing more may follow
        if hasattr(error, "sent"):
            error.sent += self._done
        if isinstance(error, IncompleteTransfer):
            error.expected += self._done
            error.args = (f"source ended after {error.sent} of {error.expected} bytes",)
