"""What a server process holds, read from ``/proc``: open fds, how many of them are pipes, and
its resident memory. The fault suite takes one snapshot before a fault and one after, and
records both as a row of the fault table (``conftest.fault_table``), printed at the end of the run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Held:
    """A process's open fds, the pipes among them, and its RSS in MiB."""

    fds: int
    pipes: int
    rss_mib: float

    def __str__(self) -> str:
        return f"{self.fds}/{self.pipes}/{self.rss_mib:.0f}"


def held(pid: int) -> Held:
    fds = pipes = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue  # closed while we looked
        fds += 1
        pipes += target.startswith("pipe:")
    return Held(fds, pipes, rss_mib(pid))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


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
