"""``pip install .`` and ``pip install -e .`` both give ``fastbody`` and ``fastbody.integrations``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_install(tmp_path: Path, editable: bool) -> None:
    target = tmp_path / "site"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    command += ["--target", str(target)] + (["-e", str(ROOT)] if editable else [str(ROOT)])
    subprocess.run(command, check=True, cwd=tmp_path, timeout=120, env={**os.environ, "PIP_NO_INPUT": "1"})
    # -S: no site-packages (where the test venv's own install lives); only the target is seen.
    probe = (
        f"import site; site.addsitedir({str(target)!r}); import fastbody, fastbody.integrations as i; "
        "print(fastbody.__file__); print(i.__file__)"
    )
    command = [sys.executable, "-S", "-c", probe]
    shown = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60)
    if editable:  # the sources themselves, from the repository's own folders
        expected = [ROOT / "fastbody" / "__init__.py", ROOT / "integrations" / "__init__.py"]
    else:
        expected = [target / "fastbody" / "__init__.py", target / "fastbody" / "integrations" / "__init__.py"]
    assert shown.stdout.split() == [str(path) for path in expected]
