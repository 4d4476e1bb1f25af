"""uvicorn protocols that send response bodies by sendfile and splice (ASGI zero-copy extensions).

    uvicorn app:app --http fastbody.integrations.uvicorn:AutoProtocol

``H11Protocol``, ``HttpToolsProtocol`` and ``AutoProtocol`` (httptools when importable, else h11)
are uvicorn's own protocols (``protocols.py``); the ``send`` their apps get is uvicorn's,
wrapped by ``send.ZeroCopySend``, and understands three more messages, advertised in
``scope["extensions"]``:

- ``http.response.pathsend`` (ASGI): ``{"path": str}``, the whole file; Starlette's ``FileResponse``
  and ``StaticFiles`` send it by themselves when it is advertised.
- ``http.response.zerocopysend`` (ASGI): ``{"file", "offset", "count", "more_body"}``.
- ``fastbody.response.splicesend`` (fastbody's): ``{"source", "count", "more_body"}`` for a socket
  or a pipe (see the README for the fields).

Their bytes go by ``fastbody.ResponseWriter`` on the connection's socket, framed by uvicorn's
own rules. ``worker.FastUvicornWorker`` is gunicorn's uvicorn worker on these protocols.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._imports import colon_form
from ..asgi import EXTENSIONS, PATHSEND, SPLICESEND, ZEROCOPYSEND
from .protocols import AutoProtocol, H11Protocol, HttpToolsProtocol
from .send import SEND_TIMEOUT, ZeroCopySend, declared_length, holds_start, with_content_length

if not TYPE_CHECKING:  # (a module __getattr__ would make every missing name Any to mypy)
    __getattr__ = colon_form(__name__)  # -k fastbody.integrations.uvicorn.worker:FastUvicornWorker

__all__ = [
    "EXTENSIONS",
    "PATHSEND",
    "SEND_TIMEOUT",
    "SPLICESEND",
    "ZEROCOPYSEND",
    "AutoProtocol",
    "H11Protocol",
    "HttpToolsProtocol",
    "ZeroCopySend",
    "declared_length",
    "holds_start",
    "with_content_length",
]
