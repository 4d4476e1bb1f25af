"""``fastbody serve DIR``: the directory's files through fastbody's StaticFiles."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .servers import announce, check_port, needs_servers, reporting, resolve_flags, run_server
from .usage import UsageError

SERVE_DIR = "FASTBODY_SERVE_DIR"
SERVE_OPTIONS = "FASTBODY_SERVE_OPTIONS"
"""The StaticFiles options of ``fastbody serve`` (JSON), handed to the worker processes."""


def serve_app() -> Any:
    """The static file app for ``$FASTBODY_SERVE_DIR``: fastbody's StaticFiles, no listings.
    A factory: each worker process builds its own."""
    from starlette.routing import Mount

    from ..starlette import StaticFiles

    directory = os.environ[SERVE_DIR]
    options = json.loads(os.environ.get(SERVE_OPTIONS, "{}"))
    # follow_symlink=False (Starlette's default): a symlink leading out of the directory is a
    # 404. html=True: a directory's index.html (a directory asked for without its trailing
    # slash is redirected to it), never a listing.
    static = StaticFiles(
        directory=directory,
        html=options.get("index", True),
        precompressed=options.get("precompressed", True),
        max_age=options.get("max_age", 60),
        dotfiles=options.get("dotfiles", False),
    )
    return reporting(Mount("/", app=static))


def serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-precompressed",
        dest="precompressed",
        action="store_false",
        help="never send a file's .br/.gz sibling in its place",
    )
    parser.add_argument(
        "--max-age",
        type=_seconds,
        default=60,
        metavar="SECONDS",
        help="Cache-Control max-age (default 60); names with a content hash are immutable for a year",
    )
    parser.add_argument(
        "--no-index", dest="index", action="store_false", help="no index.html for directories (404)"
    )
    parser.add_argument(
        "--dotfiles", action="store_true", help="serve names starting with a dot (default: 404)"
    )


def serve_command(args: argparse.Namespace) -> None:
    needs_servers(args.server)
    resolve_flags(args)
    directory = Path(args.directory).resolve()
    if not directory.is_dir():
        raise UsageError(f"no such directory: {args.directory}")
    os.environ[SERVE_DIR] = str(directory)
    os.environ[SERVE_OPTIONS] = json.dumps(
        {
            "precompressed": args.precompressed,
            "max_age": args.max_age,
            "index": args.index,
            "dotfiles": args.dotfiles,
        }
    )
    check_port(args.host, args.port)
    announce(f"serving {directory}", args)
    run_server(args, "fastbody.integrations.cli.serve:serve_app")


def _seconds(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value
