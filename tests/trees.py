"""Copies of this source tree and virtual environments for the tests that build, install or run
the project as a new user would (``test_packaging.py``, ``test_readme.py``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NOT_SOURCE: tuple[str, ...] = (
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".*_cache",
    "bench-results",
    "upstream",  # tests/uvicorn_suite/upstream: a clone made by .ci
)
"""What a source tree holds that is not source: never copied into a build, never in a dist."""


def copy_source(destination: Path) -> Path:
    """This checkout's source files, copied to ``destination`` (so nothing is written here)."""
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    return destination


def venv_seeing_this_environment(folder: Path) -> Path:
    """A new venv that sees this environment's packages (pytest, gunicorn, setuptools, pip...)
    without network installs; its python. ``--system-site-packages`` would give the *base*
    interpreter's packages when the tests run in a venv, so a .pth file names this
    environment's site dirs instead; its .pth files (this checkout's editable finder) are not
    run from there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "this-environment.pth").write_text("".join(f"{path}\n" for path in ours))
    return python
