"""fastbody's gunicorn workers against stock gunicorn: worker CPU per GiB, throughput, requests/s.

    .venv/bin/python benchmarks/gunicorn.py [--quick] [--repeat 5]

Four servers side by side on 127.0.0.1, each ``python -m gunicorn --no-control-socket -w 1``
serving benchmarks/apps/gunicorn_bench_app.py: stock ``-k sync`` and ``-k gthread --threads 8``,
fastbody ``-k egg:fastbody#sync`` and ``-k egg:fastbody#gthread --threads 8``. This process is
the client (``recv_into``, 1 MiB buffer, byte count checked); the CPU is the worker process's
run time (its CPU clock, ns, all threads: ``harness.worker_cpu``) before and after each request. Scenarios:
1. a 1 GiB file (page cache) by ``wsgi.file_wrapper(open(path, "rb"))``;
2. 1 GiB that a feeder process writes into a socket in 64 KiB chunks: stock iterates 64 KiB
   ``recv`` chunks, fastbody returns ``file_wrapper(sock, length=N)``; 2b. the same for a pipe
   (``cat FILE``'s stdout: 64 KiB ``read`` chunks vs ``file_wrapper(stdout, length=N)``);
3. ``wrk -t1 -c8 -d10s`` on 1 KiB, 16 KiB and 1 MiB files by ``file_wrapper`` (wrk comes from
   ``apt-get update && apt-get install -y wrk``; without it these rows are skipped).
``--quick``: 64 MiB bodies, 3-second wrk runs. Every wait is bounded; every process started
here is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__:  # imported as benchmarks.gunicorn (a `fastbody bench` command, say)
    from . import harness
else:  # run as a script: benchmarks/ is sys.path[0]
    import harness
GIB, MIB, SMALL, TIMEOUT = harness.GIB, harness.MIB, harness.SMALL, harness.TIMEOUT

APPS = Path(__file__).resolve().parent / "apps"


@dataclass(frozen=True)
class Kind:
    name: str
    worker: str
    threads: int = 0
    baseline: str | None = None  # the stock server a fastbody row is compared with


KINDS = (
    Kind("stock sync", "sync"),
    Kind("fastbody sync", "egg:fastbody#sync", baseline="stock sync"),
    Kind("stock gthread", "gthread", 8),
    Kind("fastbody gthread", "egg:fastbody#gthread", 8, baseline="stock gthread"),
)


class Server:
    """One gunicorn master (a child of this process) and its single worker."""

    def __init__(self, kind: Kind, logs: Path) -> None:
        self.kind = kind
        self.port = harness.free_port()
        command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-w", "1", "-k", kind.worker]
        command += ["-b", f"127.0.0.1:{self.port}", "--timeout", str(TIMEOUT), "--graceful-timeout", "5"]
        command += ["--threads", str(kind.threads)] if kind.threads else []
        command += ["--pythonpath", str(APPS), "gunicorn_bench_app:app"]
        self.log = logs / f"{kind.name.replace(' ', '-')}.log"
        with open(self.log, "wb") as log:
            self.master = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.worker = 0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.master.poll() is None:
            workers = harness.children(self.master.pid)
            if len(workers) == 1:
                try:
                    if harness.fetch(self.port, "/ready")[0] == 404:
                        self.worker = workers[0]
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind.name} did not start:\n{self.log.read_text()[-2000:]}")

    def cpu(self) -> float:
        if self.worker not in harness.children(self.master.pid):
            raise RuntimeError(f"{self.kind.name}: worker {self.worker} is gone (killed at --timeout?)")
        return harness.worker_cpu(self.worker)

    def stop(self) -> None:
        harness.stop(self.master)
        alive = self.worker and Path(f"/proc/{self.worker}").exists()
        if alive and b"gunicorn" in Path(f"/proc/{self.worker}/cmdline").read_bytes():
            os.kill(self.worker, signal.SIGKILL)


@dataclass(frozen=True)
class Case:
    key: str
    title: str  # {mib}: the body size
    paths: tuple[str, str]  # how stock and fastbody move the body
    targets: tuple[str, str]  # stock's and fastbody's request target; {big}: the big file
    limit: float  # highest fastbody/stock CPU ratio the issue expects
    feed: bool = False  # a feeder process writes the body into a socket the app connects to


CASES = (
    Case("file", "1. {mib} MiB file, file_wrapper(open(path)), app sets Content-Length",
         ("file_wrapper (sendfile)", "file_wrapper"), ("/file?path={big}", "/file?path={big}"), 1.0),
    Case("socket", "2. {mib} MiB socket body, a feeder process writes 64 KiB chunks",
         ("iterated 64 KiB recv", "file_wrapper(sock, length)"), ("/socket?wrap=", "/socket?wrap=1"),
         0.5, feed=True),
    Case("pipe", "2b. {mib} MiB pipe body (cat FILE's stdout)",
         ("iterated 64 KiB read", "file_wrapper(stdout, length)"),
         ("/pipe?path={big}", "/pipe?path={big}&wrap=1"), 0.5),
)  # fmt: skip


def big_bodies(servers: list[Server], big: str, size: int, repeat: int, checks: list[str]) -> None:
    results: dict[str, dict[str, list[tuple[float, float]]]] = {c.key: {} for c in CASES}
    for index in range(repeat):  # interleaved, so drift and other load hit every server alike
        for case in CASES:
            for server in servers:
                target = case.targets[bool(server.kind.baseline)].format(big=big)
                run = harness.measure(server, target, size, case.feed)
                results[case.key].setdefault(server.kind.name, []).append(run)
                note = f"[{index + 1}/{repeat}] {case.key} {server.kind.name}: {run[0]:.3f} s/GiB"
                harness.step(f"{note}, {run[1]:.0f} MB/s")
    print(f"\nOne request per run (Connection: close), medians of {repeat} runs. CPU: the gunicorn worker")
    print(f"process's own run time ({harness.CPU_CLOCK}) per GiB; {os.cpu_count()} CPUs, 127.0.0.1.")
    for case in CASES:
        runs = results[case.key]
        cpu = {name: statistics.median(run[0] for run in name_runs) for name, name_runs in runs.items()}
        rate = {name: statistics.median(run[1] for run in name_runs) for name, name_runs in runs.items()}
        print(f"\n### {case.title.format(mib=size // MIB)}\n")
        harness.table(
            "server", "body path", "throughput MB/s", "worker CPU s/GiB (min-max)", "fastbody/stock"
        )
        for kind in KINDS:
            low, high = min(run[0] for run in runs[kind.name]), max(run[0] for run in runs[kind.name])
            versus, base = "baseline", kind.baseline
            if base:
                ratio = harness.ratio(cpu[kind.name], cpu[base])
                versus = f"CPU {ratio:.2f}, MB/s {harness.ratio(rate[kind.name], rate[base]):.2f}"
                label = f"{case.key}: {kind.name} CPU / {base} CPU"
                checks.append(harness.verdict(label, ratio, ratio <= case.limit, f"≤ {case.limit:.2f}"))
            cells = [kind.name, case.paths[bool(base)], f"{rate[kind.name]:.0f}"]
            cells += [f"{cpu[kind.name]:.3f} ({low:.3f}-{high:.3f})", versus]
            harness.row(*cells)


def small_bodies(servers: list[Server], small: dict[int, str], seconds: int, checks: list[str]) -> None:
    print(f"\n### 3. wrk -t1 -c8 -d{seconds}s, files by file_wrapper (app sets Content-Length)\n")
    print("Both sync workers close every connection; the gthread ones (--threads 8) keep them alive.\n")
    harness.table(
        "body", "server", "requests/s", "worker CPU µs/request", "wrk errors", "fastbody/stock req/s"
    )
    for body, path in small.items():
        rates: dict[str, float] = {}
        label = harness.size_label(body)
        for server in servers:
            rate, cpu, errors = harness.run_wrk(server, f"/file?path={path}", seconds)
            rates[server.kind.name] = rate
            harness.step(f"[1/1] wrk {label} {server.kind.name}: {rate:.0f} req/s, {cpu:.0f} µs/request")
            versus, base = "baseline", server.kind.baseline
            if base:
                ratio = harness.ratio(rate, rates[base])
                versus = f"{ratio:.2f}"
                name = f"{label}: {server.kind.name} req/s / {base}"
                checks.append(harness.verdict(name, ratio, ratio >= 1.0, "≥ 1.00"))
            cells = [label, server.kind.name, f"{rate:.0f}", f"{cpu:.0f}", errors, versus]
            harness.row(*cells, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB bodies, 3-second wrk runs")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests: 4 MiB, 1 s
    parser.add_argument("--repeat", type=int, default=5, help="requests per big-body cell; medians shown")
    args = parser.parse_args(argv)
    size, wrk_seconds = (64 * MIB, 3) if args.quick else (GIB, 10)
    if args.tiny:
        size, wrk_seconds = 4 * MIB, 1
    install = "apt-get update && apt-get install -y wrk"
    if shutil.which("wrk") is None:
        print(f"wrk not found (install it: `{install}`); skipping the wrk rows.", file=sys.stderr)
    workdir = tempfile.mkdtemp(prefix="fastbody-gunicorn-bench-", dir="/tmp")
    servers: list[Server] = []
    checks: list[str] = []
    try:
        big = harness.make_file(workdir, size)
        small = {body: harness.make_file(workdir, body) for body in SMALL}
        servers = [Server(kind, Path(workdir)) for kind in KINDS]
        for server in servers:
            server.wait_ready()
        wrk_steps = len(SMALL) * len(servers) if shutil.which("wrk") is not None else 0
        harness.steps(args.repeat * len(CASES) * len(servers) + wrk_steps)
        big_bodies(servers, big, size, args.repeat, checks)
        if shutil.which("wrk") is not None:
            small_bodies(servers, small, wrk_seconds, checks)
        else:
            print(f"\n### 3. skipped: wrk is not installed (`{install}`)")
        print("\nExpectations (issue 3):\n")
        print("\n".join(checks))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
