"""A reverse-proxy endpoint whose upstream response bodies are spliced socket → pipe → socket.

    from fastbody.integrations.proxy import ReverseProxy, WSGIReverseProxy
    app = Starlette(routes=[Mount("/api", app=ReverseProxy("http://127.0.0.1:9000"))])   # ASGI
    application = WSGIReverseProxy("http://127.0.0.1:9000")                              # WSGI

The upstream is fixed by configuration. Requests go to it over HTTP/1.1 on a bounded pool of
kept-alive connections (``pool.py``); the response head is taken off the socket by the engine
and parsed by h11 (``upstream.py``), so every body byte is still in the upstream socket when
the body starts. One sans-IO exchange (``exchange.py``) serves both endpoints, which differ only
in how they talk to their server (``asgi.py``, ``wsgi.py``).
"""

from __future__ import annotations

from .asgi import ReverseProxy
from .upstream import Upstream, UpstreamError
from .wsgi import WSGIReverseProxy

__all__ = ["ReverseProxy", "Upstream", "UpstreamError", "WSGIReverseProxy"]
