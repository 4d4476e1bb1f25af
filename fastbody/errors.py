"""Exceptions raised by a transfer.

Every failure that happens once a transfer has started carries ``sent``, the number of
bytes that reached the destination socket before it, so that a server can tell a short
body from a complete one and log real counts.
"""

from __future__ import annotations

import errno


class TransferError(OSError):
    """A transfer failed; ``sent`` bytes of the body had gone out before it did."""

    sent: int

    @classmethod
    def make(cls, code: int | None, message: str, sent: int) -> TransferError:
        error = cls(code, message) if code is not None else cls(message)
        error.sent = sent
        return error


class IncompleteTransfer(TransferError):
    """The source ended before ``expected`` bytes could be sent."""

    expected: int

    @classmethod
    def short(cls, sent: int, expected: int) -> IncompleteTransfer:
        error = cls(f"source ended after {sent} of {expected} bytes")
        error.sent = sent
        error.expected = expected
        return error


class TransferTimeout(TransferError, TimeoutError):
    """The transfer made no progress for ``timeout`` seconds (e.g. the client stopped reading)."""


class PeerClosedError(TransferError, ConnectionError):
    """The destination (or a socket source) was closed or reset by its peer."""


_PEER_CLOSED = {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN}


def with_sent(error: OSError, sent: int) -> TransferError:
    """The fastbody exception that stands for ``error`` raised after ``sent`` bytes."""
    if isinstance(error, TransferError):
        error.sent = sent
        return error
    message = error.strerror or str(error) or type(error).__name__
    if isinstance(error, TimeoutError):
        return TransferTimeout.make(error.errno, message, sent)
    if isinstance(error, ConnectionError) or error.errno in _PEER_CLOSED:
        return PeerClosedError.make(error.errno, message, sent)
    return TransferError.make(error.errno, message, sent)
