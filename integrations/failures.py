"""How a server integration reports a body it could not send whole: one log line, the same in
every integration, with the counts and the reason."""

from __future__ import annotations

import logging

import fastbody


def log_broken(
    log: logging.Logger,
    error: fastbody.TransferError,
    expected: int | None,
    request: str,
    timeout: float | None,
) -> None:
    """Log why ``request``'s body stopped after ``error.sent`` bytes (of ``expected``): a client
    that left is news (info), one cut off for making no progress a warning, the rest errors."""
    of = "" if expected is None else f" of {expected}"
    if isinstance(error, fastbody.PeerClosedError):
        log.info("fastbody: client went away after %d%s bytes of %s", error.sent, of, request)
    elif isinstance(error, fastbody.TransferTimeout):
        log.warning(
            "fastbody: no progress for %s s, cut off after %d%s bytes of %s", timeout, error.sent, of, request
        )
    elif isinstance(error, fastbody.IncompleteTransfer):
        log.error("fastbody: body ended after %d%s bytes of %s: connection closed", error.sent, of, request)
    else:
        log.error("fastbody: transfer failed after %d%s bytes of %s: %s", error.sent, of, request, error)
