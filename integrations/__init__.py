"""Server and framework adapters for fastbody, imported as ``fastbody.integrations.*``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._engine_check import check_engine
from ._imports import colon_form

check_engine()  # one clear line now, not a broken response later, when a folder shadows the engine

if not TYPE_CHECKING:  # (a module __getattr__ would make every missing name Any to mypy)
    __getattr__ = colon_form(__name__)  # -k fastbody.integrations.gunicorn:FastSync, as gunicorn resolves it
