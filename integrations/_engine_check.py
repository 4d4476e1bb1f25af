"""The check that ``import fastbody`` found the engine these integrations were installed with.

A folder named ``fastbody`` in the current directory (a source checkout, say) comes first on
``sys.path`` for ``python -m gunicorn`` and ``python -c``: with an editable install, Python then
imports that folder as a namespace package while ``fastbody.integrations`` still comes from the
install, and the integrations fail much later (``module 'fastbody' has no attribute
'atransfer'`` inside a request, a 200 with an empty body). Checked once, at import, so that the
failure is one line naming both folders.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

NEEDED = ("ResponseWriter", "TransferError", "atransfer", "describe", "framing", "stats", "transfer")
"""Engine names every integration uses: a module without them is not the engine."""


class EngineShadowed(ImportError):
    """``fastbody`` is not the engine that shipped with ``fastbody.integrations``."""


def problem(engine: ModuleType, integrations: Path) -> str | None:
    """Why ``engine`` is not the engine installed beside the ``integrations`` folder, or None.

    Installed, the integrations are ``fastbody/integrations/`` inside the engine's folder; in a
    source tree (an editable install) they are ``integrations/`` beside ``fastbody/``.
    """
    where = getattr(engine, "__file__", None)
    if where is None:  # a namespace package: a folder named fastbody without __init__.py
        folder = Path(next(iter(getattr(engine, "__path__", [])), "fastbody")).resolve()
        return f"`import fastbody` found the folder {folder}, which is not the fastbody engine{SHADOWS}"
    folder = Path(where).resolve().parent
    expected = [integrations.parent, integrations.parent / "fastbody"]
    if folder not in expected:
        shipped = next((engine for engine in expected if (engine / "__init__.py").is_file()), expected[0])
        return (
            f"`import fastbody` found {folder}, not the engine installed with these integrations"
            f" ({shipped}){SHADOWS}"
        )
    missing = [name for name in NEEDED if not hasattr(engine, name)]
    if missing:
        return f"`import fastbody` found {where}, which has no {', '.join(missing)}"
    return None


SHADOWS = (
    ": a folder named fastbody in the current directory (or on PYTHONPATH) shadows the installed"
    " package; run from another directory"
)


def check_engine() -> None:
    """Raise ``EngineShadowed`` with one line when ``fastbody`` is not the engine."""
    reason = problem(sys.modules["fastbody"], Path(__file__).resolve().parent)
    if reason is not None:
        raise EngineShadowed(f"fastbody.integrations: {reason}")
