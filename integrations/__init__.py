"""Server and framework adapters for fastbody, imported as ``fastbody.integrations.*``."""

from __future__ import annotations

from ._engine_check import check_engine
from ._imports import colon_form

check_engine()  # one clear line now, not a broken response later, when a folder shadows the engine

__getattr__ = colon_form(__name__)  # -k fastbody.integrations.gunicorn:FastSync, as gunicorn resolves it
