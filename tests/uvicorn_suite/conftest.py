"""uvicorn's own protocol tests, run against uvicorn's protocols and against fastbody's.

`.ci/uvicorn-conformance` fetches uvicorn's `tests/protocols/test_http.py` (and the parts of
uvicorn's tests package it needs) into `upstream/`, which is never committed, and runs it twice:
with FASTBODY_UVICORN_SUITE=stock (uvicorn's classes, untouched) and =fastbody. Without that
variable, as in the project's own `pytest` run, `upstream/` is never collected.

In the fastbody run, wherever the suite uses uvicorn's H11Protocol or HttpToolsProtocol, it
gets fastbody's subclass instead: as the value of its `http_protocol_cls` fixture (swapped in
the test's arguments just before the call, so test ids stay uvicorn's; uvicorn's conftest.py
defines the fixture nearer the tests, so one defined here could not override it) and as the
test module's names `H11Protocol` / `HttpToolsProtocol`, which some tests use directly. Other
classes (zttp) are left alone. Each test records the class it received as the property `http_protocol_cls`,
so the script can check that the swap happened.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

MODE = os.environ.get("FASTBODY_UVICORN_SUITE", "")
if MODE not in ("", "stock", "fastbody"):
    raise pytest.UsageError(f"FASTBODY_UVICORN_SUITE={MODE!r}: expected 'stock' or 'fastbody'")

collect_ignore = [] if MODE else ["upstream"]


def _swaps() -> dict[type, type]:
    """uvicorn's protocol classes -> fastbody's subclasses of them (empty in the stock run)."""
    if MODE != "fastbody":
        return {}
    from uvicorn.protocols.http import h11_impl

    from fastbody.integrations import uvicorn as fast

    swaps: dict[type, type] = {h11_impl.H11Protocol: fast.H11Protocol}
    try:
        from uvicorn.protocols.http import httptools_impl
    except ModuleNotFoundError:  # httptools is not installed: the suite skips those tests
        return swaps
    swaps[httptools_impl.HttpToolsProtocol] = fast.HttpToolsProtocol
    return swaps


SWAPS = _swaps()


@pytest.fixture(autouse=True)
def _fastbody_module_names(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    for stock, fast in SWAPS.items():
        if getattr(request.module, stock.__name__, None) is stock:
            monkeypatch.setattr(request.module, stock.__name__, fast)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    cls = pyfuncitem.funcargs.get("http_protocol_cls")
    if isinstance(cls, type):
        cls = pyfuncitem.funcargs["http_protocol_cls"] = SWAPS.get(cls, cls)
        pyfuncitem.user_properties.append(("http_protocol_cls", f"{cls.__module__}.{cls.__qualname__}"))
    return (yield)
