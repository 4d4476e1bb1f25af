"""The ``fastbody`` command: ``serve`` a directory, ``proxy`` an upstream, ``bench`` this machine.

    fastbody serve [DIR] [--host 127.0.0.1] [--port 8000] [--workers N] [--server uvicorn|gunicorn]
    fastbody proxy UPSTREAM_URL [--host ...] [--port ...] [--workers N] [--server ...]
    fastbody bench [--quick] [--out DIR]

Bad arguments give one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main", "proxy_app", "serve_app"]

SERVE_DIR = "FASTBODY_SERVE_DIR"
PROXY_UPSTREAM = "FASTBODY_PROXY_UPSTREAM"


class UsageError(Exception):
    """A bad argument or a start-up check that failed: one line for the user, exit status 2."""


# The apps the servers run (factories: each worker process builds its own)


def serve_app() -> Any:
    """The static file app for ``$FASTBODY_SERVE_DIR``: fastbody's StaticFiles, no listings."""
    from starlette.routing import Mount

    from .starlette import StaticFiles

    directory = os.environ[SERVE_DIR]
    # html=False: a directory is a 404, never a listing; follow_symlink=False (Starlette's
    # default): a symlink leading out of the directory is a 404 too.
    return _reporting(Mount("/", app=StaticFiles(directory=directory, html=False)))


def proxy_app() -> Any:
    """The reverse proxy to ``$FASTBODY_PROXY_UPSTREAM`` for every path."""
    from starlette.routing import Mount

    from .proxy import ReverseProxy

    return _reporting(Mount("/", app=ReverseProxy(os.environ[PROXY_UPSTREAM])))


def _reporting(route: Any) -> Any:
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


# Commands


def _needs_servers(server: str) -> None:
    """The extras a command needs, checked before anything starts."""
    modules = ["uvicorn", "starlette", "h11"] + (
        ["gunicorn", "uvicorn_worker"] if server == "gunicorn" else []
    )
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise UsageError(f"needs {module}: pip install 'fastbody[all]'") from None


def _serve(args: argparse.Namespace) -> None:
    _needs_servers(args.server)
    directory = Path(args.directory).resolve()
    if not directory.is_dir():
        raise UsageError(f"no such directory: {args.directory}")
    os.environ[SERVE_DIR] = str(directory)
    _check_port(args.host, args.port)
    _announce(f"serving {directory}", args)
    _run(args, "fastbody.integrations.cli:serve_app")


def _proxy(args: argparse.Namespace) -> None:
    _needs_servers(args.server)
    from .upstream import Upstream

    try:
        upstream = Upstream.parse(args.upstream)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        socket.create_connection((upstream.host, upstream.port), timeout=5).close()
    except OSError as error:
        raise UsageError(f"upstream {args.upstream} is unreachable: {error.strerror or error}") from None
    os.environ[PROXY_UPSTREAM] = args.upstream
    _check_port(args.host, args.port)
    _announce(f"proxying to {args.upstream}", args)
    _run(args, "fastbody.integrations.cli:proxy_app")


def _announce(what: str, args: argparse.Namespace) -> None:
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


def _run(args: argparse.Namespace, factory: str) -> None:
    """Hand over to the server; it handles SIGINT/SIGTERM: in-flight responses finish or are
    closed, worker processes are stopped, and the command exits."""
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


def _check_port(host: str, port: int) -> None:
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


def _bench(args: argparse.Namespace) -> None:
    from .bench import run_bench

    run_bench(quick=args.quick or args.tiny, tiny=args.tiny, out=Path(args.out))


# Arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {text}")
    return port


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=_positive, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--server",
        choices=("uvicorn", "gunicorn"),
        default="uvicorn",
        help="uvicorn with fastbody's protocol (default), or gunicorn with fastbody's uvicorn worker",
    )


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="fastbody", description="Zero-copy response bodies: serve, proxy, bench.")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="serve a directory's files (sendfile, ranges, conditional requests)",
        description="Serve the files of DIR: ranges and conditional requests, no directory listings,"
        " nothing outside DIR (.., symlinks out, encoded traversal: 404).",
    )
    serve.add_argument("directory", nargs="?", default=".", metavar="DIR", help="default: the current one")
    _server_options(serve)
    serve.set_defaults(run=_serve)
    proxy = commands.add_parser(
        "proxy",
        help="reverse-proxy every request to UPSTREAM_URL (bodies spliced)",
        description="A reverse proxy to UPSTREAM_URL whose response bodies are spliced socket to socket.",
    )
    proxy.add_argument("upstream", metavar="UPSTREAM_URL", help="http://host:port[/base]")
    _server_options(proxy)
    proxy.set_defaults(run=_proxy)
    bench = commands.add_parser(
        "bench",
        help="stock vs fastbody benchmarks on this machine: a Markdown table and a PNG chart",
        description="Run the side-by-side benchmarks of benchmarks/ and write results.md and results.png.",
    )
    bench.add_argument("--quick", action="store_true", help="small bodies and short runs (under 2 minutes)")
    bench.add_argument("--out", default="bench-results", help="directory for results (default bench-results)")
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the CLI's own smoke test
    bench.set_defaults(run=_bench)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except UsageError as error:
        print(f"fastbody {args.command}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
