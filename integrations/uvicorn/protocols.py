"""uvicorn's own HTTP protocols with one change: the app they run gets ``ZeroCopySend`` as its
``send``, and its scope advertises the zero-copy extensions.

The protocol is uvicorn's class, subclassed only to wrap its app (``self.app``, which uvicorn
calls for every request with the cycle's own ``send``) and to tell a running transfer that the
client went away. Keep-alive, pipelining, flow control, logging and every message that is not
a zero-copy one stay uvicorn's code.

With ``FASTBODY_XSENDFILE_ROOTS`` or ``FASTBODY_ACCEL_REDIRECT`` set, the app also runs inside
``HandoffApp``: a response naming a file by ``X-Sendfile`` / ``X-Accel-Redirect`` is answered
with that file, zero-copy. The settings are read once, when uvicorn imports this module at
startup (a malformed value stops the server there); unset, there is no wrapper at all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http import h11_impl

from ..asgi import EXTENSIONS
from ..files.asgi import HandoffApp
from ..files.handoff import Handoff
from .send import ZeroCopySend, log

try:
    from uvicorn.protocols.http import httptools_impl
except ImportError:  # httptools is not installed: AutoProtocol is the h11 one
    httptools_impl = None  # type: ignore[assignment]

Scope = dict[str, Any]

HANDOFF = Handoff.from_environ()
"""Where ``X-Sendfile`` / ``X-Accel-Redirect`` files may live; None: the headers pass through."""


class ZeroCopyApp:
    """The protocol's app: the configured app, called with a ``ZeroCopySend`` around uvicorn's
    cycle ``send``. A head the app left held (it returned or failed before any body) is sent as
    uvicorn would have sent it, so uvicorn's own outcome follows: a closed connection, not a 500.
    With handoff settings, the app runs inside ``HandoffApp``, whose file answers go out through
    the same ``ZeroCopySend``."""

    def __init__(self, app: Any, handoff: Handoff | None = None) -> None:
        self.app = app if handoff is None else HandoffApp(app, handoff, log)
        self.sending: set[ZeroCopySend] = set()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extensions = scope.setdefault("extensions", {})
        for name in EXTENSIONS:
            extensions[name] = {}
        zero_copy = ZeroCopySend(send.__self__)  # uvicorn passes its cycle's bound send
        self.sending.add(zero_copy)
        try:
            return await self.app(scope, receive, zero_copy)  # (uvicorn complains of a value)
        finally:
            self.sending.discard(zero_copy)
            await zero_copy.release()

    def connection_lost(self) -> None:
        for zero_copy in self.sending:
            zero_copy.connection_lost()


class ZeroCopyProtocol(asyncio.Protocol):
    """Mixed into each of uvicorn's protocol classes: wraps its app in ``ZeroCopyApp`` and tells
    a running transfer that the client went away. Nothing else of uvicorn's is changed."""

    app: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = self.zero_copy = ZeroCopyApp(self.app, HANDOFF)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.zero_copy.connection_lost()


class H11Protocol(ZeroCopyProtocol, h11_impl.H11Protocol):
    pass


if httptools_impl is not None:

    class HttpToolsProtocol(ZeroCopyProtocol, httptools_impl.HttpToolsProtocol):
        pass

    AutoProtocol: type[asyncio.Protocol] = HttpToolsProtocol
else:
    HttpToolsProtocol = None  # type: ignore[misc]
    AutoProtocol = H11Protocol
