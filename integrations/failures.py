"""How a server integration reports a body: one log line when it could not be sent whole, the
same in every integration, with the counts and which side failed (the client, or the source:
an upstream socket, a file); and the name of the path that moved it, for access logs."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable

import fastbody
import fastbody.counters
import fastbody.readiness
import fastbody.response


class SourceFailed(fastbody.IncompleteTransfer):
    """The body's source failed part-way (``reason``: how), not the client: an upstream socket
    that closed early or was reset, an upstream that sent garbage mid-body. An
    ``IncompleteTransfer``, as every body cut short by its source; ``expected`` is None when the
    length was not known."""

    reason: str

    @classmethod
    def of(cls, reason: str, sent: int, expected: int | None, code: int | None = None) -> SourceFailed:
        of = "" if expected is None else f" of {expected}"
        text = f"source {reason} after {sent}{of} bytes"
        error = cls(code, text) if code is not None else cls(text)
        error.reason, error.sent, error.expected = reason, sent, expected  # type: ignore[assignment]
        return error


def blame(
    error: fastbody.TransferError, source: object, client: socket.socket | None
) -> fastbody.TransferError:
    """``error`` as the side that failed. ``source``: the body's source (a ``fastbody.Source``,
    or the object handed over). The engine says ``PeerClosedError`` for a socket reset by its
    peer whichever socket it was; when the source is a socket and the ``client`` is still
    connected (not hung up: no end, no error waiting), it was the source's peer, an upstream.
    A socket source that ended before its count is an upstream that closed early."""
    if not _is_socket(source) or isinstance(error, SourceFailed):
        return error
    if isinstance(error, fastbody.IncompleteTransfer):
        return SourceFailed.of("closed", error.sent, getattr(error, "expected", None))
    if isinstance(error, fastbody.PeerClosedError) and client is not None and _connected(client):
        return SourceFailed.of("reset", error.sent, None, error.errno)
    return error


def outcome(error: BaseException | None) -> str:
    """How a response ended (``fastbody.counters.OUTCOMES``), for an integration that reports
    it itself: complete, or its failure as ``blame`` named it (an upstream's is ``upstream``)."""
    if error is None:
        return fastbody.counters.COMPLETE
    if isinstance(error, SourceFailed):
        return fastbody.counters.UPSTREAM
    return fastbody.response.outcome_of(error)


def _is_socket(source: object) -> bool:
    if isinstance(source, fastbody.Source):
        return source.kind == "socket"
    return isinstance(source, socket.socket)


def _connected(client: socket.socket) -> bool:
    """The client still there: not closed, reset or hung up (bytes it sent and nobody read, a
    pipelined request, are no sign it left)."""
    try:
        return client.fileno() >= 0 and not fastbody.readiness.hung_up(client)
    except (OSError, ValueError):
        return False


def log_broken(
    log: logging.Logger,
    error: fastbody.TransferError,
    expected: int | None,
    request: str,
    timeout: float | None,
) -> None:
    """Log why ``request``'s body stopped after ``error.sent`` bytes (of ``expected``), in one
    line and never with a traceback: a client that left is news (info), one cut off for making
    no progress a warning, a source that failed (upstream, file) an error."""
    of = "" if expected is None else f" of {expected}"
    if isinstance(error, fastbody.PeerClosedError):
        log.info("fastbody: client went away after %d%s bytes of %s", error.sent, of, request)
    elif isinstance(error, fastbody.TransferTimeout):
        log.warning(
            "fastbody: no progress for %s s, cut off after %d%s bytes of %s", timeout, error.sent, of, request
        )
    elif isinstance(error, SourceFailed):
        log.error(
            "fastbody: upstream %s after %d%s bytes of %s: connection closed",
            error.reason,
            error.sent,
            of,
            request,
        )
    elif isinstance(error, fastbody.IncompleteTransfer):
        log.error("fastbody: body ended after %d%s bytes of %s: connection closed", error.sent, of, request)
    else:
        log.error("fastbody: transfer failed after %d%s bytes of %s: %s", error.sent, of, request, error)


# Which path moved a body, for access logs


def paths_label(paths: Iterable[str]) -> str:
    """Path names in the order first used, ``+`` between them; ``-`` for none (no body byte)."""
    return "+".join(dict.fromkeys(paths)) or "-"
