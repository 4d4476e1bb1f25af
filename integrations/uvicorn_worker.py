"""The old import path of ``FastUvicornWorker``: ``fastbody.integrations.uvicorn.worker`` now."""

from __future__ import annotations

from .uvicorn.worker import FastUvicornWorker

__all__ = ["FastUvicornWorker"]
