"""fastbody's gunicorn workers against stock gunicorn: worker CPU per GiB, throughput, requests/s.

    .venv/bin/python benchmarks/gunicorn.py [--quick] [--repeat 5] [--threads 8] [--only big|small]

Four servers side by side on 127.0.0.1, each ``python -m gunicorn --no-control-socket -w 1``
serving benchmarks/apps/gunicorn_bench_app.py: stock ``-k sync`` and ``-k gthread --threads 8``,
fastbody ``-k egg:fastbody#sync`` and ``-k egg:fastbody#gthread --threads 8``. This process is
the client (``recv_into``, 1 MiB buffer, byte count checked); the CPU is the worker process's
run time (its CPU clock, ns, all threads: ``harness.worker_cpu``) before and after each request. Scenarios:
1. a 1 GiB file (page cache) by ``wsgi.file_wrapper(open(path, "rb"))``;
2. 1 GiB that a feeder process writes into a socket in 64 KiB chunks: stock iterates 64 KiB
   ``recv`` chunks, fastbody returns ``file_wrapper(sock, length=N)``; 2b. the same for a pipe
   (``cat FILE``'s stdout: 64 KiB ``read`` chunks vs ``file_wrapper(stdout, length=N)``), with
   the raw-splice floor beside it in the same run (``SpliceFloor``: a bare ``os.splice`` loop;
   on loopback the sender's CPU is mostly the kernel's TCP send and receive path, which no
   worker avoids, so the floor, not half of stock, is what the pipe rows can reach);
3. ``wrk -t1 -c8 -d10s`` on 1 KiB, 16 KiB and 1 MiB files by ``file_wrapper``, ``--repeat`` runs
   per server, each fastbody worker alternating with its stock baseline (A/B), medians and spreads
   (wrk comes from ``apt-get update && apt-get install -y wrk``; without it these rows are skipped).
``--quick``: 64 MiB bodies, 3-second wrk runs. Every wait is bounded; every process started
here is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

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


class SpliceFloor:
    """The raw-splice floor of a pipe body: one process that answers each connection with
    ``cat FILE``'s stdout (its pipe grown to 1 MiB, as the engine grows it) by a bare blocking
    ``os.splice`` loop and nothing else, the least CPU a Python process spends moving a pipe
    onto a socket. Measured as the workers are: its own CPU, not cat's."""

    name = "raw splice loop (floor)"

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.process = harness.FORK.Process(target=_floor_main, args=(self.listener,), daemon=True)
        self.process.start()

    def cpu(self) -> float:
        assert self.process.pid is not None
        return harness.worker_cpu(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.listener.close()


def _floor_main(listener: socket.socket) -> None:
    """``SpliceFloor``'s process: one request at a time, ``GET /...?path=P``, until stopped."""
    while True:
        conn = listener.accept()[0]
        with conn:
            conn.settimeout(TIMEOUT)
            head = b""
            while b"\r\n\r\n" not in head and (data := conn.recv(4096)):
                head += data
            target = head.split(b" ", 2)[1].decode()
            path = parse_qs(urlsplit(target).query)["path"][0]
            size = os.path.getsize(path)
            with subprocess.Popen(["cat", path], stdout=subprocess.PIPE) as cat:
                assert cat.stdout is not None
                source = cat.stdout.fileno()
                with suppress(OSError):
                    fcntl.fcntl(source, fcntl.F_SETPIPE_SZ, MIB)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
                conn.settimeout(None)  # blocking: the kernel waits, as in the engine's blocking driver
                left = size
                while left and (moved := os.splice(source, conn.fileno(), left)):
                    left -= moved


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


def big_bodies(
    servers: list[Server], floor: SpliceFloor, big: str, size: int, repeat: int, checks: list[str]
) -> None:
    results: dict[str, dict[str, list[tuple[float, float]]]] = {c.key: {} for c in CASES}
    for index in range(repeat):  # interleaved, so drift and other load hit every server alike
        for case in CASES:
            measured: list[tuple[str, harness.Measured, str]] = [
                (server.kind.name, server, case.targets[bool(server.kind.baseline)]) for server in servers
            ]
            if case.key == "pipe":  # the floor beside them, in the same run
                measured.append((floor.name, floor, case.targets[1]))
            for name, server, target in measured:
                run = harness.measure(server, target.format(big=big), size, case.feed)
                results[case.key].setdefault(name, []).append(run)
                note = f"[{index + 1}/{repeat}] {case.key} {name}: {run[0]:.3f} s/GiB"
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
                checks.append(_cpu_verdict(label, ratio, case.limit, cpu[kind.name], cpu.get(floor.name)))
            cells = [kind.name, case.paths[bool(base)], f"{rate[kind.name]:.0f}"]
            cells += [f"{cpu[kind.name]:.3f} ({low:.3f}-{high:.3f})", versus]
            harness.row(*cells)
        if floor.name in runs:
            low, high = min(run[0] for run in runs[floor.name]), max(run[0] for run in runs[floor.name])
            versus = f"CPU {harness.ratio(cpu[floor.name], cpu['stock sync']):.2f} of stock sync"
            cells = [floor.name, "os.splice loop, 1 MiB pipe", f"{rate[floor.name]:.0f}"]
            harness.row(*cells, f"{cpu[floor.name]:.3f} ({low:.3f}-{high:.3f})", versus)


FLOOR_SLACK = 1.1
"""A worker within this much of the raw-splice floor's CPU is at the floor: what is left is the
kernel's (the socket's send path, loopback's receive side, the pipe), not the worker's."""


def _cpu_verdict(label: str, ratio: float, limit: float, mine: float, floor: float | None) -> str:
    """Held when the ratio to stock is within ``limit``, or the worker is at the floor."""
    if ratio <= limit or floor is None:
        return harness.verdict(label, ratio, ratio <= limit, f"≤ {limit:.2f}")
    at_floor = mine <= floor * FLOOR_SLACK
    expected = f"≤ {limit:.2f}, or the raw-splice floor: {mine / floor:.2f}x its {floor:.3f} s/GiB"
    return harness.verdict(label, ratio, at_floor, expected)


def small_bodies(
    servers: list[Server], small: dict[int, str], seconds: int, repeat: int, checks: list[str]
) -> None:
    """wrk on each small file, each fastbody server A/B against its stock baseline: the two take
    turns run after run (stock first in odd runs, fastbody first in even ones), so drift and the
    load of other processes hit both alike."""
    pairs = [(server, next(base for base in servers if base.kind.name == server.kind.baseline))
             for server in servers if server.kind.baseline]  # fmt: skip
    runs: dict[tuple[int, str], list[harness.Wrk]] = {}
    for index in range(repeat):
        for body, path in small.items():
            for fast, stock in pairs:
                for server in (stock, fast) if index % 2 == 0 else (fast, stock):
                    run = harness.wrk(server, f"/file?path={path}", seconds)
                    runs.setdefault((body, server.kind.name), []).append(run)
                    note = f"[{index + 1}/{repeat}] wrk {harness.size_label(body)} {server.kind.name}"
                    harness.step(f"{note}: {run.rate:.0f} req/s, {run.cpu_us:.0f} µs/request")
    print(f"\n### 3. wrk -t1 -c8 -d{seconds}s, files by file_wrapper (app sets Content-Length), A/B\n")
    threads = servers[-1].kind.threads
    print(f"Both sync workers close every connection; the gthread ones (--threads {threads}) keep them")
    print(f"alive. Each fastbody worker and its stock baseline ran alternately, {repeat} runs each:")
    print("medians (min-max); the ratio is of the medians, (min-max) of the run-by-run ratios.\n")
    harness.table(
        "body", "server", "requests/s (min-max)", "worker CPU µs/request (min-max)", "wrk errors",
        "fastbody/stock req/s (min-max)",
    )  # fmt: skip
    for body in small:
        label = harness.size_label(body)
        for fast, stock in pairs:
            for server in (stock, fast):
                cell = runs[body, server.kind.name]
                rates, cpus = [run.rate for run in cell], [run.cpu_us for run in cell]
                versus = "baseline"
                if server is fast:
                    base = [run.rate for run in runs[body, stock.kind.name]]
                    ratio = harness.ratio(statistics.median(rates), statistics.median(base))
                    each = [harness.ratio(mine, theirs) for mine, theirs in zip(rates, base, strict=True)]
                    versus = f"{ratio:.2f} ({min(each):.2f}-{max(each):.2f})"
                    name = f"{label}: {server.kind.name} req/s / {stock.kind.name}"
                    checks.append(harness.verdict(name, ratio, ratio >= 1.0, "≥ 1.00"))
                errors = "; ".join(sorted({run.errors for run in cell} - {"none"})) or "none"
                cells = [label, server.kind.name, _spread(rates), _spread(cpus), errors, versus]
                harness.row(*cells, flush=True)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB bodies, 3-second wrk runs")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests: 4 MiB, 1 s
    parser.add_argument(
        "--repeat", type=int, default=5, help="requests per big-body cell, wrk runs per server; medians"
    )
    parser.add_argument("--threads", type=int, default=8, help="gthread workers' --threads")
    parser.add_argument("--only", choices=("big", "small"), help="only the big-body or the wrk scenarios")
    args = parser.parse_args(argv)
    size, wrk_seconds = (64 * MIB, 3) if args.quick else (GIB, 10)
    if args.tiny:
        size, wrk_seconds = 4 * MIB, 1
    install = "apt-get update && apt-get install -y wrk"
    if shutil.which("wrk") is None:
        print(f"wrk not found (install it: `{install}`); skipping the wrk rows.", file=sys.stderr)
    workdir = tempfile.mkdtemp(prefix="fastbody-gunicorn-bench-", dir="/tmp")
    servers: list[Server] = []
    floor: SpliceFloor | None = None
    checks: list[str] = []
    try:
        big = harness.make_file(workdir, size if args.only != "small" else 1)
        small = {body: harness.make_file(workdir, body) for body in SMALL}
        kinds = [replace(kind, threads=args.threads) if kind.threads else kind for kind in KINDS]
        servers = [Server(kind, Path(workdir)) for kind in kinds]
        floor = SpliceFloor()
        for server in servers:
            server.wait_ready()
        wrk = shutil.which("wrk") is not None and args.only != "big"
        big_steps = args.repeat * (len(CASES) * len(servers) + 1) if args.only != "small" else 0
        harness.steps(big_steps + (args.repeat * len(SMALL) * len(servers) if wrk else 0))
        if args.only != "small":
            big_bodies(servers, floor, big, size, args.repeat, checks)
        if wrk:
            small_bodies(servers, small, wrk_seconds, args.repeat, checks)
        elif args.only != "big":
            print(f"\n### 3. skipped: wrk is not installed (`{install}`)")
        print("\nExpectations (issue 3):\n")
        print("\n".join(checks))
    finally:
        for server in servers:
            server.stop()
        if floor is not None:
            floor.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
