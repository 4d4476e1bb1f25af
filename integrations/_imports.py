"""The colon form of an import string (``package.module:Name``) as gunicorn resolves it.

``gunicorn -k fastbody.integrations.gunicorn:FastSync`` splits the string at dots only, so it
imports ``fastbody.integrations`` and asks it for the attribute ``gunicorn:FastSync``. An
``AttributeError`` there would be hidden by gunicorn's ``Config.__getattr__``, which then hands
the arbiter the string itself as the worker class (``TypeError: 'str' object is not callable``);
a name that does not resolve is an ``ImportError`` instead, which gunicorn reports as an invalid
class uri. A package answers such names with ``__getattr__ = colon_form(__name__)``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def colon_form(package: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that resolves ``"module:Name"``."""

    def __getattr__(name: str) -> Any:
        module, colon, attribute = name.partition(":")
        if not colon:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        imported = importlib.import_module(f"{package}.{module}")
        try:
            return getattr(imported, attribute)
        except AttributeError:
            raise ImportError(f"cannot import name {attribute!r} from {imported.__name__!r}") from None

    return __getattr__
