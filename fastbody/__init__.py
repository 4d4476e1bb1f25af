"""fastbody: send response bodies the way Go's net/http does — sendfile, splice, or copy.

import fastbody
fastbody.transfer(sock, open("big.iso", "rb"))      # sendfile
await fastbody.atransfer(sock, upstream_socket)     # splice through a pooled pipe
fastbody.stats()                                     # {"sendfile": ..., "splice": ..., "copy": ...}
"""

from __future__ import annotations

from . import framing
from .counters import stats
from .errors import IncompleteTransfer, PeerClosedError, TransferError, TransferTimeout
from .readiness import achunks, apending, buffered, pending, read_some, readable_now
from .response import ResponseWriter
from .source import Source, describe
from .transfer import atransfer, transfer

__all__ = [
    "IncompleteTransfer",
    "PeerClosedError",
    "ResponseWriter",
    "Source",
    "TransferError",
    "TransferTimeout",
    "achunks",
    "apending",
    "atransfer",
    "buffered",
    "describe",
    "framing",
    "pending",
    "read_some",
    "readable_now",
    "stats",
    "transfer",
]
