"""gunicorn's worker for uvicorn (the ``uvicorn-worker`` package) on fastbody's protocol.

gunicorn -k egg:fastbody#uvicorn app:app
gunicorn -k fastbody.integrations.gunicorn.FastUvicornWorker app:app
"""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker

__all__ = ["FastUvicornWorker"]


class FastUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """``UvicornWorker`` whose HTTP protocol is ``fastbody.integrations.uvicorn:AutoProtocol``."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "http": "fastbody.integrations.uvicorn:AutoProtocol",
    }
