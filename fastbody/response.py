"""One HTTP/1 response body on one connection: the head, the framing, the pieces, the count.

Go's ``(*response).ReadFrom`` in Python: the caller (a server integration) has decided the head
and the framing (``fastbody.framing``); the writer sends the head with the body's first bytes,
moves every piece by sendfile, splice or copy, writes the framing bytes around each piece (a
chunk's size line before it, its CRLF after, the last chunk at the end), counts every body byte
in ``stats()`` and returns the exact count, or raises a ``TransferError`` carrying it.

The writer also knows when its response ended, and how: subscribers of
``fastbody.counters.subscribe`` hear it once per response (``outcome_of`` says how a failure is
told). A body ends when its last piece went out (``last=True``, ``end()``) or its Content-Length
is filled (a server that writes the body's end itself), or when a piece fails; an integration
that knows better (a response spanning writers, a failure it can blame on an upstream) makes
its writers with ``reports=False`` and tells ``counters.response_ended`` itself. A writer whose
head is a request line (a proxy forwarding a request body upstream) is no response.

    writer = ResponseWriter(sock, framing, head=head_bytes, timeout=30)
    writer.send(open("big.iso", "rb"), last=True)    # or: await writer.asend(...)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Generator
from typing import Any

from . import counters
from .drivers import run_async, run_blocking
from .errors import IncompleteTransfer, PeerClosedError, TransferTimeout
from .framing import BodyWriter, Framing, writer_for
from .pipes import PipePool, default_pool
from .pump import Progress, Pump, Request, pump
from .source import StreamBody, StreamKind
from .transfer import destination, source_body


def outcome_of(error: BaseException, *, socket_source: bool = False) -> str:
    """How a response whose body failed with ``error`` ended (one of ``counters.OUTCOMES``).

    By the exception's type: the peer closed or reset a socket → ``client_gone``, and so does
    a transfer cancelled or closed by its driver (uvicorn cancels a transfer when its client
    goes away); no progress for the timeout → ``timeout``; the source ended before the body's
    length → ``short_source``, or ``upstream`` when the source was a socket (another server's
    answer, the proxy's upstream); anything else → ``error``. Which side of a relay a reset or a
    stall came from is not known to the engine: both count as the client's.
    """
    if isinstance(error, PeerClosedError | asyncio.CancelledError | GeneratorExit):
        return counters.CLIENT_GONE
    if isinstance(error, TransferTimeout):
        return counters.TIMEOUT
    if isinstance(error, IncompleteTransfer):
        return counters.UPSTREAM if socket_source else counters.SHORT_SOURCE
    return counters.ERROR


class ResponseWriter:
    """The body of one response, sent piece by piece on ``sock``.

    ``framing``: a ``Framing`` decided by ``fastbody.framing.for_response`` (or any
    ``BodyWriter``, such as one that asks h11). ``head``: bytes that go before the first body
    byte (the response head, when the integration has not sent it itself). ``timeout``: the
    seconds a piece may make no progress (nothing read, nothing written) before
    ``TransferTimeout``. ``kernel=False``: copy every byte (no sendfile, no splice).
    ``reports=False``: the caller tells ``counters.response_ended`` itself (a response whose
    body spans several writers, or whose failure it can name better: an upstream's).
    ``sent``: the body bytes sent so far, framing bytes not counted; ``paths``: them by path.
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
        reports: bool = True,
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
        self._moved = dict.fromkeys(counters.PATHS, 0)  # this response's body bytes by path
        # Observers hear of its end once (none listening, or a request's body: never).
        self._observed = reports and counters.listening() and not _request_line(head)
        self._socket_source = False  # the last piece came from a socket (an upstream's answer)

    @property
    def paths(self) -> dict[str, int]:
        """This body's bytes so far by the path that moved them (``sendfile``, ``splice``,
        ``copy``: the names of ``stats()``), the paths that moved none left out: what really
        moved them, fallbacks included."""
        return {path: count for path, count in self._moved.items() if count}

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
            self._report(outcome_of(error, socket_source=self._socket_source))
            raise
        if self._observed and (last or self.framing.remaining == 0):
            self._report(counters.COMPLETE)
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
        self._piece = Progress(count, self._moved)  # the piece's count, and the response's by path
        self._socket_source = isinstance(body, StreamBody) and body.kind is StreamKind.SOCKET
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

    def _report(self, outcome: str) -> None:
        """Tell observers this response ended (once; nothing when nobody listened)."""
        if self._observed:
            self._observed = False
            counters.response_ended(self._moved, outcome)

    def _count_whole(self, error: BaseException) -> None:
        """Make ``error`` count the whole body's bytes, not just this piece's."""
        self.ended = True  # a failed piece leaves the framing broken: nothing more may follow
        if hasattr(error, "sent"):
            error.sent += self._done
        if isinstance(error, IncompleteTransfer):
            error.expected += self._done
            error.args = (f"source ended after {error.sent} of {error.expected} bytes",)


def _request_line(head: bytes) -> bool:
    """Whether ``head`` starts a request, not a response (whose status line begins "HTTP/", which
    no method can: "/" is no token character)."""
    return bool(head) and not head.startswith(b"HTTP/")
