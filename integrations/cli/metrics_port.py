"""``--metrics-port N`` of ``fastbody serve`` and ``fastbody proxy``: Prometheus counters of every
worker (``fastbody.integrations.metrics``), answered on a port of their own by the launcher
(uvicorn) or gunicorn's master.

The launcher points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory (the operator's, wiped of
stale files, or a new temporary one) before anything imports prometheus_client, and exports
``FASTBODY_METRICS_PORT``; each worker's app factory then installs the counters
(:func:`install_in_worker`), and the process that answers scrapes adds the workers' files up."""

from __future__ import annotations

import argparse
import atexit
import glob
import importlib.util
import os
import shutil
import tempfile

from .usage import UsageError

PORT = "FASTBODY_METRICS_PORT"
HOST = "FASTBODY_METRICS_HOST"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

GUNICORN_HOOKS = "python:fastbody.integrations.cli.metrics_port"
"""This module as a gunicorn config (``-c``): its ``when_ready`` is gunicorn's master hook."""


def prepare(args: argparse.Namespace) -> None:
    """In the launcher, before the server starts: check the extra, share the workers' counts."""
    if args.metrics_port is None:
        return
    # Not imported here: prometheus_client picks how it keeps values (in memory, or in the
    # directory's files) when first imported, so the variable must be set before that.
    if importlib.util.find_spec("prometheus_client") is None:
        raise UsageError("--metrics-port needs prometheus_client: pip install 'fastbody[metrics]'")
    directory = os.environ.get(MULTIPROC_DIR)
    if not directory:
        directory = tempfile.mkdtemp(prefix="fastbody-metrics-")
        # Removed when the launcher exits (uvicorn's); gunicorn's master is this process after an
        # exec and leaves it behind in the temporary directory.
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(os.path.join(directory, "*.db")):  # counts of an earlier run
        os.unlink(stale)
    os.environ[MULTIPROC_DIR] = directory
    os.environ[PORT] = str(args.metrics_port)
    os.environ[HOST] = args.host


def serve_here() -> None:
    """Answer scrapes from this process (the uvicorn launcher, or gunicorn's master)."""
    if PORT in os.environ:
        from ..metrics import serve

        serve(int(os.environ[PORT]), os.environ.get(HOST, "127.0.0.1"))


def install_in_worker() -> None:
    """Count this worker's bodies when ``--metrics-port`` asked for it (its app factory calls this)."""
    if PORT in os.environ:
        from ..metrics import install

        install()


def when_ready(server: object) -> None:
    """gunicorn's master hook (this module is its ``-c`` config when metrics are on)."""
    serve_here()
