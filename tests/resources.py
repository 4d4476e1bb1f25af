"""What a server process holds, read from ``/proc``: open fds, how many of them are pipes, and
its resident memory. The fault suite takes one snapshot before a fault and one after, and
records both as a row of the fault table (``conftest.fault_table``), printed at the end of the run.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType


def _load_harness() -> ModuleType:
    """benchmarks/harness.py, loaded by its path: putting benchmarks/ on sys.path would let its
    uvicorn.py and gunicorn.py shadow the real packages for every test collected after this one."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "harness.py"
    spec = importlib.util.spec_from_file_location("bench_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up by name)
    spec.loader.exec_module(module)
    return module


harness = _load_harness()
Held = harness.Held
"""A process's open fds, the pipes among them, and its RSS in MiB (the soak's sampler's)."""
held = harness.held


def settled(pid: int, baseline: Held, timeout: float = 10, rss_slack_mib: float = 16) -> Held:
    """The process's holdings once they are back to ``baseline`` (fds and pipes no more than it,
    RSS within ``rss_slack_mib``), or what they still are after ``timeout`` seconds: a server
    closes a connection's fds when it notices the fault, which may be a moment after the client."""
    deadline = time.monotonic() + timeout
    while True:
        now = held(pid)
        back = now.fds <= baseline.fds and now.pipes <= baseline.pipes
        if (back and now.rss_mib <= baseline.rss_mib + rss_slack_mib) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def assert_released(before: Held, after: Held, rss_slack_mib: float = 16) -> None:
    """No fd or pipe more than before the fault, and RSS within ``rss_slack_mib`` of it."""
    assert after.fds <= before.fds, f"fds leaked: {before} -> {after} (fds/pipes/RSS MiB)"
    assert after.pipes <= before.pipes, f"pipes leaked: {before} -> {after} (fds/pipes/RSS MiB)"
    assert after.rss_mib <= before.rss_mib + rss_slack_mib, f"RSS grew: {before} -> {after}"
