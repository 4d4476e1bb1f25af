"""A 16 MiB file for the examples to serve (made once in the temp directory)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

BIG = Path(tempfile.gettempdir()) / "fastbody-example-16m.bin"

if not BIG.exists():
    part = BIG.with_suffix(f".{os.getpid()}")
    part.write_bytes(os.urandom(16 << 20))
    part.replace(BIG)  # atomic: several workers may start at once
