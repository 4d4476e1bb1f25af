"""``fastbody proxy UPSTREAM_URL``: fastbody's ReverseProxy to one upstream for every path."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from .servers import announce, check_port, needs_servers, reporting, resolve_flags, run_server
from .usage import UsageError

PROXY_UPSTREAM = "FASTBODY_PROXY_UPSTREAM"


def proxy_app() -> Any:
    """The reverse proxy to ``$FASTBODY_PROXY_UPSTREAM`` for every path. A factory: each worker
    process builds its own."""
    from starlette.routing import Mount

    from ..proxy import ReverseProxy

    return reporting(Mount("/", app=ReverseProxy(os.environ[PROXY_UPSTREAM])))


def proxy_command(args: argparse.Namespace) -> None:
    needs_servers(args.server)
    resolve_flags(args)
    from ..proxy.upstream import Upstream

    try:
        upstream = Upstream.parse(args.upstream)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        socket.create_connection((upstream.host, upstream.port), timeout=5).close()
    except OSError as error:
        raise UsageError(f"upstream {args.upstream} is unreachable: {error.strerror or error}") from None
    os.environ[PROXY_UPSTREAM] = args.upstream
    check_port(args.host, args.port)
    announce(f"proxying to {args.upstream}", args)
    run_server(args, "fastbody.integrations.cli.proxy:proxy_app")
