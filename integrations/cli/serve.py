"""``fastbody serve DIR``: the directory's files through fastbody's StaticFiles."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .servers import announce, check_port, needs_servers, reporting, run_server
from .usage import UsageError

SERVE_DIR = "FASTBODY_SERVE_DIR"


def serve_app() -> Any:
    """The static file app for ``$FASTBODY_SERVE_DIR``: fastbody's StaticFiles, no listings.
    A factory: each worker process builds its own."""
    from starlette.routing import Mount

    from ..starlette import StaticFiles

    directory = os.environ[SERVE_DIR]
    # html=False: a directory is a 404, never a listing; follow_symlink=False (Starlette's
    # default): a symlink leading out of the directory is a 404 too.
    return reporting(Mount("/", app=StaticFiles(directory=directory, html=False)))


def serve_command(args: argparse.Namespace) -> None:
    needs_servers(args.server)
    directory = Path(args.directory).resolve()
    if not directory.is_dir():
        raise UsageError(f"no such directory: {args.directory}")
    os.environ[SERVE_DIR] = str(directory)
    check_port(args.host, args.port)
    announce(f"serving {directory}", args)
    run_server(args, "fastbody.integrations.cli.serve:serve_app")
