"""Server and framework adapters for fastbody, imported as ``fastbody.integrations.*``."""

from __future__ import annotations

import importlib
from typing import Any

from ._engine_check import check_engine

check_engine()  # one clear line now, not a broken response later, when a folder shadows the engine


def __getattr__(name: str) -> Any:
    """``"gunicorn:FastSync"``: the colon form of an import string, as gunicorn resolves it.

    ``gunicorn -k fastbody.integrations.gunicorn:FastSync`` splits the string at dots only, so it
    imports this package and asks it for ``gunicorn:FastSync``. An ``AttributeError`` here would
    be hidden by gunicorn's ``Config.__getattr__``, which then hands the arbiter the string
    itself as the worker class (``TypeError: 'str' object is not callable``); a name that does
    not resolve is an ``ImportError`` instead, which gunicorn reports as an invalid class uri.
    """
    module, colon, attribute = name.partition(":")
    if not colon:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    imported = importlib.import_module(f"{__name__}.{module}")
    try:
        return getattr(imported, attribute)
    except AttributeError:
        raise ImportError(f"cannot import name {attribute!r} from {imported.__name__!r}") from None
