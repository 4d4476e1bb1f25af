"""Prometheus counters of the bodies fastbody moved (the ``fastbody[metrics]`` extra).

    fastbody_body_bytes_total{path="sendfile"|"splice"|"copy"}
    fastbody_responses_total{path="sendfile"|"splice"|"copy"|"none", outcome="complete"|...}

``install()`` subscribes them to the engine's counters (``fastbody.counters.subscribe``) in the
process that calls it; call it once in every process that serves (each gunicorn or uvicorn
worker: at the import of the app module, or in gunicorn's ``post_fork`` hook, ``post_fork``
below). Bytes are the ones ``fastbody.stats()`` counts, as they are counted; a response is
counted once, when its body ended, under the path that moved most of it and its outcome
(``fastbody.counters.OUTCOMES``: complete, client_gone, timeout, short_source, upstream, error).

Several processes: with ``PROMETHEUS_MULTIPROC_DIR`` set (to an empty directory, in the
environment that starts the server, before anything imports prometheus_client), every worker
writes its counts to files there and ``serve()`` / ``registry()`` add them up, the counts of
workers that exited included. gunicorn's ``child_exit`` hook should call
``prometheus_client.multiprocess.mark_process_dead`` (``child_exit`` below). Without it, the
counters are this process's own, as ``fastbody.stats()`` is.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from fastbody import counters

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

BODY_BYTES = Counter(
    "fastbody_body_bytes",
    "Response body bytes fastbody moved to clients, by the path that moved them (framing not counted)",
    ["path"],
)
RESPONSES = Counter(
    "fastbody_responses",
    "Response bodies fastbody sent, by the path that moved most of their bytes and how they ended",
    ["path", "outcome"],
)


class Recorder:
    """The engine's listener: each counted batch and each ended response into the counters."""

    def __init__(self) -> None:
        # Every series exists from the start (at 0), so rates and ratios need no absent-series care.
        self.bytes = {path: BODY_BYTES.labels(path=path) for path in counters.PATHS}
        self.responses = {
            (path, outcome): RESPONSES.labels(path=path, outcome=outcome)
            for path in (*counters.PATHS, counters.NONE)
            for outcome in counters.OUTCOMES
        }

    def moved(self, path: str, count: int) -> None:
        self.bytes[path].inc(count)

    def ended(self, path: str, outcome: str) -> None:
        self.responses[path, outcome].inc()


_lock = threading.Lock()
_recorder: Recorder | None = None


def install() -> None:
    """Feed the counters from this process's transfers from now on (again: nothing more)."""
    global _recorder
    with _lock:
        if _recorder is None:
            _recorder = Recorder()
            counters.subscribe(_recorder)


def uninstall() -> None:
    """Stop feeding the counters (what they counted stays)."""
    global _recorder
    with _lock:
        if _recorder is not None:
            counters.unsubscribe(_recorder)
            _recorder = None


def multiprocess() -> bool:
    """Whether the counters are shared through ``PROMETHEUS_MULTIPROC_DIR`` files."""
    return bool(os.environ.get(MULTIPROC_DIR))


def registry() -> CollectorRegistry:
    """The registry to expose: every process's counts in multiprocess mode (a fresh registry
    with a ``MultiProcessCollector``), else prometheus_client's default one (this process's).
    For a metrics route of your own: ``prometheus_client.make_asgi_app(registry=registry())``."""
    if not multiprocess():
        return REGISTRY
    shared = CollectorRegistry()
    MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
    return shared


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Answer Prometheus scrapes (``GET /metrics``, any path in fact) on ``host:port``, from a
    daemon thread of this process; returns once the port is bound (``OSError`` if it cannot be).

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) each scrape adds up the files of
    every worker, so this runs in any one process: the server's master or launcher (what
    ``fastbody serve --metrics-port N`` calls), a sidecar, a worker. That process must have
    the variable set before it forks or spawns the workers, and before prometheus_client is
    imported anywhere in it. Without the variable it answers this process's counts only.
    """
    start_http_server(port, addr=host, registry=registry())


# gunicorn server hooks, for a config file:
#     from fastbody.integrations.metrics import child_exit, post_fork


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn's ``post_fork`` hook: count in the new worker."""
    install()


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: the worker's files are final (prometheus_client's rule)."""
    if multiprocess():
        mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


__all__ = [
    "BODY_BYTES",
    "RESPONSES",
    "child_exit",
    "install",
    "multiprocess",
    "post_fork",
    "registry",
    "serve",
    "uninstall",
]
