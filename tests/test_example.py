"""The README's first command runs this example: it must keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_serve_file_demo() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "serve_file.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("sha256 matches") == 3
    assert "'sendfile': 201326592" in result.stdout
