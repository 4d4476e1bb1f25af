"""Which path moves a body: a pure decision, tested without sockets."""

from __future__ import annotations

import enum

from . import config
from .source import Body, ChunksBody, FileBody, ReaderBody, StreamBody, StreamKind

SMALL_BODY = config.current().small_body
"""Bodies known to be shorter than this are copied: below it splice and sendfile save nothing
(Go sees no gain at 1 KiB; HAProxy never splices under 4 KiB). Measured by
``benchmarks/small_bodies.py``. 32 KiB unless configured (``FASTBODY_SMALL_BODY``,
``fastbody.configure(small_body=...)``, which rewrites this name)."""


class Path(enum.Enum):
    SENDFILE = "sendfile"  # regular file → socket
    SPLICE_POOLED = "splice-pooled"  # socket → pooled pipe → socket
    SPLICE_DIRECT = "splice-direct"  # pipe → socket
    COPY = "copy"  # read into a reused buffer, then send


def known_length(body: Body, count: int | None) -> int | None:
    """How many bytes the transfer will move, when that can be told before it starts."""
    if body.length is None:
        return count
    if count is None:
        return body.length
    return min(body.length, count)


def choose_path(body: Body, count: int | None, *, tls: bool) -> Path:
    """The first path to try; a kernel path that cannot start falls back to ``COPY``."""
    if tls or isinstance(body, (ReaderBody, ChunksBody)):
        return Path.COPY
    length = known_length(body, count)
    if length is not None and length < SMALL_BODY:
        return Path.COPY
    if isinstance(body, FileBody):
        return Path.SENDFILE
    assert isinstance(body, StreamBody)
    if body.tls is not None or body.kind is StreamKind.OTHER:
        return Path.COPY
    if body.kind is StreamKind.PIPE:
        return Path.SPLICE_DIRECT
    return Path.SPLICE_POOLED


TRICKLE_FILL = 16 << 10
TRICKLE_RUN = 8


class Trickle:
    """Tells when a spliced source arrives in small pieces, so that copying is cheaper.

    Splicing a socket costs two calls per fill whatever the fill's size; a source that trickles
    in a few KiB at a time (small upstream writes, a slow network) makes every fill small, and
    there a plain copy costs less CPU (measured by ``benchmarks/engine.py``, 1 KiB feeder).
    ``TRICKLE_RUN`` fills under ``TRICKLE_FILL`` in a row say the source trickles.
    """

    def __init__(self) -> None:
        self.small_in_a_row = 0

    def seen(self, filled: int) -> bool:
        """Count one fill; ``True`` once the source has trickled long enough to switch."""
        self.small_in_a_row = self.small_in_a_row + 1 if filled < TRICKLE_FILL else 0
        return self.small_in_a_row >= TRICKLE_RUN
