"""The names of the ASGI zero-copy extensions: the keys a server puts in ``scope["extensions"]``
and the ``type`` of the messages an app then sends (see the README for their fields)."""

from __future__ import annotations

PATHSEND = "http.response.pathsend"
"""ASGI spec: ``{"path"}``, the whole file; ends the response."""

ZEROCOPYSEND = "http.response.zerocopysend"
"""ASGI spec: ``{"file", "offset", "count", "more_body"}``."""

SPLICESEND = "fastbody.response.splicesend"
"""fastbody's: ``{"source", "count", "more_body"}`` for a socket or pipe."""

EXTENSIONS = (PATHSEND, ZEROCOPYSEND, SPLICESEND)
