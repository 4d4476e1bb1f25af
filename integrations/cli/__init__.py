"""The ``fastbody`` command: ``serve`` a directory, ``proxy`` an upstream, ``bench`` this machine.

    fastbody serve [DIR] [--no-precompressed] [--max-age S] [--no-index] [--dotfiles] [--host ...] ...
    fastbody proxy UPSTREAM_URL [--host ...] [--port ...] [--workers N] [--server ...]
    fastbody bench [--quick] [--out DIR]
    fastbody --version

serve and proxy also take the server flags of :mod:`.servers` (TLS, logs, trusted proxies, send
timeout), each with a ``FASTBODY_*`` variable as its default: flag > variable > default.

Bad arguments, and a command failing for a reason outside it (a directory it cannot write), give
one line on stderr and exit status 2, never a traceback. This module is the argparse front; each
command lives in its own module (:mod:`.serve`, :mod:`.proxy`, :mod:`.bench`), and what serve
and proxy share in :mod:`.servers`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import fastbody

from .proxy import proxy_app, proxy_command
from .serve import serve_app, serve_command, serve_options
from .servers import server_flags
from .usage import UsageError

__all__ = ["UsageError", "main", "parser", "proxy_app", "serve_app"]


def _bench(args: argparse.Namespace) -> None:
    from .bench import run_bench  # its imports only when benchmarking

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before anything runs: an --out it cannot write is one line
    run_bench(quick=args.quick or args.tiny, tiny=args.tiny, out=out)


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
    server_flags(parser)


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="fastbody", description="Zero-copy response bodies: serve, proxy, bench.")
    top.add_argument("--version", action="version", version=f"fastbody {fastbody.__version__}")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="serve a directory's files (sendfile, ranges, conditional requests)",
        description="Serve the files of DIR: precompressed .br/.gz siblings, Cache-Control, index.html,"
        " ranges and conditional requests; no directory listings, no dotfiles, nothing outside DIR"
        " (.., symlinks out, encoded traversal: 404).",
    )
    serve.add_argument("directory", nargs="?", default=".", metavar="DIR", help="default: the current one")
    serve_options(serve)
    _server_options(serve)
    serve.set_defaults(run=serve_command)
    proxy = commands.add_parser(
        "proxy",
        help="reverse-proxy every request to UPSTREAM_URL (bodies spliced)",
        description="A reverse proxy to UPSTREAM_URL whose response bodies are spliced socket to socket.",
    )
    proxy.add_argument("upstream", metavar="UPSTREAM_URL", help="http://host:port[/base]")
    _server_options(proxy)
    proxy.set_defaults(run=proxy_command)
    bench = commands.add_parser(
        "bench",
        help="stock vs fastbody benchmarks on this machine: a Markdown table and a PNG chart",
        description="Run the side-by-side benchmarks of benchmarks/ and write results.md and results.png.",
    )
    bench.add_argument("--quick", action="store_true", help="small bodies, short runs (a minute each)")
    bench.add_argument("--out", default="bench-results", help="directory for results (default bench-results)")
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the CLI's own smoke test
    bench.set_defaults(run=_bench)
    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except UsageError as error:
        _fail(args.command, str(error))
    except OSError as error:  # the machine refused something the command needs (--out in /proc)
        where = f" {error.filename}" if error.filename is not None else ""
        _fail(args.command, f"cannot use{where}: {error.strerror or error}")
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _fail(command: str, message: str) -> NoReturn:
    print(f"fastbody {command}: {message}", file=sys.stderr)
    raise SystemExit(2) from None
