"""fastbody: send response bodies the way Go's net/http does — sendfile, splice, or copy.

import fastbody
fastbody.transfer(sock, open("big.iso", "rb"))      # sendfile
await fastbody.atransfer(sock, upstream_socket)     # splice through a pooled pipe
fastbody.stats()                                     # {"sendfile": ..., "splice": ..., "copy": ...}
fastbody.configure(small_body=16 << 10)              # the knobs (also FASTBODY_* variables)
"""

from __future__ import annotations

from importlib import metadata as _metadata

from . import config, framing
from .config import Settings, configure
from .counters import stats
from .errors import IncompleteTransfer, PeerClosedError, TransferError, TransferTimeout
from .readiness import achunks, apending, buffered, pending, read_some, readable_now
from .response import ResponseWriter
from .source import Source, describe
from .transfer import atransfer, transfer

try:
    __version__ = _metadata.version("fastbody")
    """The installed distribution's version: pyproject.toml's ``version`` is the one source."""
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "IncompleteTransfer",
    "PeerClosedError",
    "ResponseWriter",
    "Settings",
    "Source",
    "TransferError",
    "TransferTimeout",
    "__version__",
    "achunks",
    "apending",
    "atransfer",
    "buffered",
    "config",
    "configure",
    "describe",
    "framing",
    "pending",
    "read_some",
    "readable_now",
    "stats",
    "transfer",
]
