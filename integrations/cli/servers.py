"""What ``serve`` and ``proxy`` share: the extras they need, the port and capability checks made
before anything starts, handing over to uvicorn or gunicorn, and the app that reports the bytes
moved when its process stops."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from typing import Any

from .usage import UsageError


def reporting(route: Any) -> Any:
    """A Starlette app around ``route`` that logs, when its process stops, how many bytes each
    path moved (``fastbody.stats()``): how an operator tells that the kernel paths were used."""
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette

    import fastbody

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        moved = ", ".join(f"{path} {count}" for path, count in fastbody.stats().items())
        logging.getLogger("uvicorn.error").info("fastbody: bytes moved by this process: %s", moved)

    return Starlette(routes=[route], lifespan=lifespan)


def needs_servers(server: str) -> None:
    """The extras a command needs, checked before anything starts."""
    modules = ["uvicorn", "starlette", "h11"] + (
        ["gunicorn", "uvicorn_worker"] if server == "gunicorn" else []
    )
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise UsageError(f"needs {module}: pip install 'fastbody[all]'") from None


def check_port(host: str, port: int) -> None:
    """Fail now, in one line, if the address cannot be listened on."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use") from None
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def announce(what: str, args: argparse.Namespace) -> None:
    from fastbody.capabilities import probe

    try:
        paths = probe().describe()
    except OSError as error:  # no loopback to try them on: say so, and serve anyway
        paths = f"unknown ({error.strerror or error})"
    workers = f"{args.workers} worker{'s' if args.workers != 1 else ''}"
    print(
        f"fastbody: {what} at http://{args.host}:{args.port}/ ({args.server}, {workers});"
        f" zero-copy on this machine: {paths}",
        file=sys.stderr,
        flush=True,
    )


def run_server(args: argparse.Namespace, factory: str) -> None:
    """Hand over to the server; it handles SIGINT/SIGTERM: in-flight responses finish or are
    closed, worker processes are stopped, and the command exits. ``factory`` is a
    ``module:function`` string each worker process resolves to build its own app."""
    if args.server == "gunicorn":
        command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-k", "egg:fastbody#uvicorn"]
        command += ["-w", str(args.workers), "-b", _bind(args.host, args.port), "--graceful-timeout", "10"]
        os.execv(sys.executable, [*command, f"{factory}()"])  # the process becomes gunicorn's master
    import uvicorn

    uvicorn.run(
        factory,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        http="fastbody.integrations.uvicorn:AutoProtocol",
        log_level="info",
        timeout_graceful_shutdown=10,
    )


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
