"""fastbody: send response bodies the way Go's net/http does — sendfile, splice, or copy.

import fastbody
fastbody.transfer(sock, open("big.iso", "rb"))      # sendfile
await fastbody.atransfer(sock, upstream_socket)     # splice through a pooled pipe
fastbody.stats()                                     # {"sendfile": ..., "splice": ..., "copy": ...}
"""

from __future__ import annotations

from .counters import stats
from .errors import IncompleteTransfer, PeerClosedError, TransferError, TransferTimeout
from .readiness import apending, buffered, pending
from .transfer import atransfer, transfer

__all__ = [
    "IncompleteTransfer",
    "PeerClosedError",
    "TransferError",
    "TransferTimeout",
    "apending",
    "atransfer",
    "buffered",
    "pending",
    "stats",
    "transfer",
]
