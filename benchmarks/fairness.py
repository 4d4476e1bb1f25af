"""Fairness under big downloads: does one uvicorn worker still answer a small request quickly
while it streams 200 big files at once?

    .venv/bin/python benchmarks/fairness.py [--quick] [--repeat 3]

Three servers, each ``python -m uvicorn --workers 1`` (one process) on 127.0.0.1, serving one
directory (a 1 KiB and a 16 MiB file, from the page cache) through
benchmarks/apps/static_bench_app.py:

1. fastbody's ``H11Protocol`` on asyncio, fastbody's ``StaticFiles``;
2. fastbody's ``HttpToolsProtocol`` on uvloop, fastbody's ``StaticFiles``;
3. stock uvicorn (``--http httptools --loop uvloop``), Starlette's ``StaticFiles``.

One run, for one server: 200 download loops in this process (one asyncio task each, on uvloop
when installed; raw non-blocking sockets, Connection: close) each GET the 16 MiB file, again and
again, and check every download whole: status, Content-Length, and the sha256 of the body
against the file's. Once all 200 are receiving, a probe process (its own process, so that its
clock is not this busy loop's) GETs the 1 KiB file one request after another on one kept-alive
connection, exactly ``--probes`` times (500), each body compared byte for byte, and records each
request's latency (request written → last body byte read). When the probe is done the download
loops stop starting new downloads, finish the ones under way, and are checked. The probes of
every server thus run under the same load and are the same in number (the issue's stock figure
came from a run 4x longer than fastbody's; a run cut short at ``DEADLINE`` makes every server's
percentiles come from its first probes, as many as the shortest run has). The window between
the first and the last probe gives the server's CPU per GiB moved and the throughput of all the
downloads together.

Read it as: probe p99 is how long a small request may wait behind the big ones; the issue's
targets are p99 ≤ 10 ms and ≤ 2x stock's p99 for each fastbody server. The client, the probe and
the server share the machine's CPUs (the client hashes every byte it receives), so latencies move
with other load on the machine: compare servers within one run, not across runs.

``--quick``: 300 probes, one round (with ``--repeat 1``). Every wait is bounded (a probe run
stops at ``DEADLINE`` seconds, a drain at ``TIMEOUT``); every process started here is stopped by
its pid (also on Ctrl-C); the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.fairness (a `fastbody bench` command, say)
    from . import harness
else:  # run as a script: benchmarks/ is sys.path[0] (so never `import uvicorn` in this process)
    import harness

GIB, MIB, KIB, TIMEOUT = harness.GIB, harness.MIB, harness.KIB, harness.TIMEOUT
DEADLINE = 120  # seconds one probe run may take before it stops short (the table then says so)
RAMP = 10  # seconds the downloads may take to all be receiving before the probe starts anyway

FB_H11 = "fastbody h11/asyncio"
FB_HTTPTOOLS = "fastbody httptools/uvloop"
STOCK = "stock uvicorn httptools/uvloop"
FASTBODY_SERVERS = (FB_H11, FB_HTTPTOOLS)
APP = {FB_H11: "fastbody StaticFiles", FB_HTTPTOOLS: "fastbody StaticFiles", STOCK: "Starlette StaticFiles"}


def uvicorn(name: str, factory: str, http: str, loop: str, www: Path, workdir: Path) -> harness.Program:
    port = harness.free_port()
    command = [sys.executable, "-m", "uvicorn", f"static_bench_app:{factory}", "--factory"]
    command += ["--app-dir", str(harness.APPS), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--http", http, "--loop", loop, "--log-level", "warning", "--no-access-log"]
    env = {"FASTBODY_BENCH_STATIC": str(www)}
    return harness.Program(name, f"--http {http} --loop {loop}", command, port, workdir, env)


def servers(www: Path, workdir: Path) -> list[harness.Program]:
    protocols = "fastbody.integrations.uvicorn"
    return [
        uvicorn(FB_H11, "fastbody_static", f"{protocols}:H11Protocol", "asyncio", www, workdir),
        uvicorn(FB_HTTPTOOLS, "fastbody_static", f"{protocols}:HttpToolsProtocol", "uvloop", www, workdir),
        uvicorn(STOCK, "starlette_static", "httptools", "uvloop", www, workdir),
    ]


# The probe: its own process, N small requests one after another


def probe_main(port: int, target: str, body: bytes, count: int, go: Event, results: Connection) -> None:
    """Once ``go`` is set, GET ``target`` ``count`` times on one kept-alive connection (a new one
    after a failure), each body compared with ``body``; send back (latencies in seconds,
    failures). Stops short at DEADLINE."""
    latencies: list[float] = []
    failures = 0
    sock: socket.socket | None = None
    request = f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    try:
        if go.wait(RAMP + 30):
            sock = connect(port)  # before the first probe: its latency is the request's, not the handshake's
            deadline = time.monotonic() + DEADLINE
            while len(latencies) < count and time.monotonic() < deadline:
                try:
                    start = time.perf_counter()
                    sock = sock or connect(port)  # after a failure: a new connection, timed
                    sock.sendall(request)
                    read_response(sock, body)
                    latencies.append(time.perf_counter() - start)
                except OSError:
                    failures += 1
                    if sock is not None:
                        sock.close()
                    sock = None
    finally:
        if sock is not None:
            sock.close()
        results.send((latencies, failures))
        results.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, body: bytes) -> None:
    """Read one response to the end of its Content-Length; it must be a 200 with ``body``."""
    response = b""
    while b"\r\n\r\n" not in response:
        if not (data := sock.recv(64 * KIB)):
            raise ConnectionError("the server closed the probe connection")
        response += data
    head, _, got = response.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:")), -1)
    while length >= 0 and len(got) < length:
        if not (data := sock.recv(64 * KIB)):
            raise ConnectionError("the server closed the probe connection")
        got += data
    if not head.startswith(b"HTTP/1.1 200") or got != body:
        raise ConnectionError(f"unexpected probe response {response[:80]!r}")


# The downloads: one task per connection, in this process


@dataclass
class Crowd:
    """What the download loops did."""

    size: int
    digest: bytes
    receiving: int = 0  # loops that got their first body bytes
    moved: int = 0  # body bytes received, all downloads
    complete: int = 0  # downloads whose bytes all arrived and whose sha256 matched
    failures: list[str] = field(default_factory=list)
    stop: bool = False


async def download(port: int, target: str, crowd: Crowd, buffer: memoryview, first: bool) -> bool:
    """One GET of ``target`` (Connection: close), its body hashed as it arrives; True when it
    arrived whole and right."""
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = f"GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
        await loop.sock_sendall(sock, request)
        head = b""
        while b"\r\n\r\n" not in head and (data := await loop.sock_recv(sock, 64 * KIB)):
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        digest, total = hashlib.sha256(rest), len(rest)
        crowd.receiving += first
        while got := await loop.sock_recv_into(sock, buffer):
            digest.update(buffer[:got])
            total += got
            crowd.moved += got
    status = int(head.split(b" ", 2)[1]) if head.count(b" ") >= 2 else 0
    if status != 200 or total != crowd.size or digest.digest() != crowd.digest:
        crowd.failures.append(
            f"status {status}, {total} of {crowd.size} bytes, sha256 {digest.hexdigest()[:12]}"
        )
        return False
    return True


async def download_loop(port: int, target: str, crowd: Crowd) -> None:
    buffer = memoryview(bytearray(256 * KIB))
    first = True
    while not crowd.stop:
        try:
            whole = await download(port, target, crowd, buffer, first)  # (not `+= await`: a lost update)
            crowd.complete += whole
        except OSError as error:
            crowd.failures.append(repr(error))
        first = False


@dataclass(frozen=True)
class Run:
    """One server's run: the probes, and the downloads around them."""

    probes: list[float]  # latencies, seconds
    probe_failures: int
    complete: int
    failed: int
    failure: str  # the first failure, or ""
    window: float  # seconds from the probe's start to its end
    moved: int  # body bytes received in that window
    cpu: float  # server CPU seconds in that window


async def crowd_run(server: harness.Program, files: Files, count: int, probe: Probe) -> Run:
    """``count`` download loops on ``server``; the probe (already started) let go beside them."""
    crowd = Crowd(files.big_size, files.big_digest)
    tasks = [asyncio.ensure_future(download_loop(server.port, files.big, crowd)) for _ in range(count)]
    try:
        ramp = time.monotonic() + RAMP
        while crowd.receiving < count and time.monotonic() < ramp:
            await asyncio.sleep(0.01)
        before, moved, start = server.cpu(), crowd.moved, time.perf_counter()
        probe.go.set()
        while not probe.results.poll() and probe.process.is_alive():
            await asyncio.sleep(0.01)
        window, used, moved = time.perf_counter() - start, server.cpu() - before, crowd.moved - moved
        timed: tuple[list[float], int] = probe.results.recv() if probe.results.poll(5) else ([], 0)
    finally:
        crowd.stop = True
        _, pending = await asyncio.wait(tasks, timeout=TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    cut = len(pending)  # downloads still running at the deadline: they count as failed
    failures = [*crowd.failures, *(["the download did not finish in time"] if cut else [])]
    first = failures[0] if failures else ""
    return Run(timed[0], timed[1], crowd.complete, len(crowd.failures) + cut, first, window, moved, used)


@dataclass(frozen=True)
class Probe:
    """The probe process of one run, forked before the run's event loop starts, waiting for ``go``."""

    go: Event
    results: Connection
    process: Any  # a multiprocessing Process (the fork context's class has no public name)

    @staticmethod
    def start(server: harness.Program, files: Files, probes: int) -> Probe:
        go = harness.FORK.Event()
        receiver, sender = harness.FORK.Pipe(duplex=False)
        args = (server.port, files.small, files.small_body, probes, go, sender)
        process = harness.FORK.Process(target=probe_main, args=args, daemon=True)
        process.start()
        sender.close()
        return Probe(go, receiver, process)

    def stop(self) -> None:
        """Let it go (if it never was), wait for it a bounded time, kill it by pid if it lingers."""
        self.go.set()
        self.process.join(DEADLINE + 10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.results.close()


def run_loop(main: Callable[[], Coroutine[Any, Any, Run]]) -> Run:
    """Run ``main()`` on uvloop when it is installed (a lighter client), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


# The report


@dataclass(frozen=True)
class Files:
    big: str  # target
    big_size: int
    big_digest: bytes
    small: str  # target
    small_body: bytes


def make_files(www: Path, big: int) -> Files:
    www.mkdir()
    small = Path(harness.make_file(str(www), KIB))
    (www / "tiny").write_bytes(b"ok\n")
    path = Path(harness.make_file(str(www), big))
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(MIB):
            digest.update(block)
    return Files(f"/{path.name}", big, digest.digest(), f"/{small.name}", small.read_bytes())


def held(ok: bool) -> str:
    return "held" if ok else "DID NOT HOLD"


def ms(values: list[float], fraction: float) -> float:
    return harness.percentile(values, fraction) * 1e3


def report(runs: dict[str, list[Run]], count: int, big: int, probes: int) -> list[str]:
    """The table, and the target lines it gives."""
    print(f"\n### {count} concurrent {big // MIB} MiB downloads, one uvicorn worker: probe latency\n")
    print(f"A probe process GETs a 1 KiB file {probes} times, one request after another on one kept-alive")
    print(f"connection, while {count} download loops each GET the {big // MIB} MiB file again and again;")
    print("every download's sha256 checked. Medians over rounds; MB/s and CPU over the probe window.\n")
    columns = ["server", "app", "downloads ok (failed)", "window s", "MB/s, all downloads"]
    columns += ["server CPU s/GiB", "probes (failed)", "probe p50 ms", "probe p99 ms", "probe max ms"]
    harness.table(*columns)
    p99: dict[str, float] = {}
    lines: list[str] = []
    same = min((len(run.probes) for cell in runs.values() for run in cell), default=0)
    if same < probes:  # a run stopped short at DEADLINE: every percentile over the first `same` probes
        print(f"Percentiles over the first {same} probes of every run (a run stopped short).\n")
    for name, cell in runs.items():

        def median(pick: Callable[[Run], float], cell: list[Run] = cell) -> float:
            return statistics.median(pick(run) for run in cell)

        p99[name] = median(lambda run: ms(run.probes[:same], 0.99))
        cells = [name, APP[name], f"{sum(run.complete for run in cell)} ({sum(run.failed for run in cell)})"]
        cells += [
            f"{median(lambda run: run.window):.2f}",
            f"{median(lambda run: run.moved / run.window / 1e6):.0f}",
        ]
        cells.append(f"{median(lambda run: run.cpu * GIB / max(run.moved, 1)):.3f}")
        done = min(len(run.probes) for run in cell)
        cells.append(f"{done} ({sum(run.probe_failures for run in cell)})")
        cells += [f"{median(lambda run: ms(run.probes[:same], 0.5)):.1f}", f"{p99[name]:.1f}"]
        harness.row(*cells, f"{median(lambda run: ms(run.probes[:same], 1.0)):.1f}")
        failed = [run.failure for run in cell if run.failure]
        whole = (
            f"every download whole and its sha256 right in {len(cell) - len(failed)} of {len(cell)} rounds"
        )
        why = f" ({failed[0]})" if failed else ""
        lines.append(f"- {name}: {whole}{why} — {held(not failed)}")
        if done < probes:
            cut = f"{done} of {probes} probes answered within {DEADLINE} s"
            lines.append(f"- {name}: {cut}; every server's percentiles over its first {same}")
    for name in FASTBODY_SERVERS:
        if name not in p99:
            continue
        lines.append(f"- {name}: probe p99 {p99[name]:.1f} ms (expected ≤ 10 ms) — {held(p99[name] <= 10)}")
        if p99.get(STOCK):
            value = harness.ratio(p99[name], p99[STOCK])
            label = f"{name}: probe p99 ÷ stock's p99, over {same} probes each"
            lines.append(harness.verdict(label, value, value <= 2.0, "≤ 2.00"))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 probes")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests: 20 x 1 MiB
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians shown")
    parser.add_argument("--probes", type=int, default=None, help="probe requests per run (default 500)")
    parser.add_argument("--downloads", type=int, default=200, help="concurrent download loops")
    args = parser.parse_args(argv)
    big, count, probes = 16 * MIB, args.downloads, 300 if args.quick else 500
    if args.tiny:
        big, count, probes = MIB, 20, 30
    probes = args.probes or probes
    workdir = Path(tempfile.mkdtemp(prefix="fastbody-fairness-bench-", dir="/tmp"))
    programs: list[harness.Program] = []
    try:
        files = make_files(workdir / "www", big)
        programs = harness.start_all(servers(workdir / "www", workdir), [], {FB_H11, FB_HTTPTOOLS, STOCK})
        requests = [(files.small, files.small_body), ("/tiny", b"ok\n")]
        for program in programs:
            harness.get_kept_alive(program.port, requests)
        harness.steps(args.repeat * len(programs))
        print(f"Servers: python -m uvicorn --workers 1 on 127.0.0.1, {os.cpu_count()} CPUs shared with")
        print("the client and the probe; files from the page cache.")
        runs: dict[str, list[Run]] = {program.name: [] for program in programs}
        for index in range(args.repeat):  # interleaved, so drift and other load hit every server alike
            for program in programs:
                probe = Probe.start(program, files, probes)
                try:
                    run = run_loop(partial(crowd_run, program, files, count, probe))
                finally:
                    probe.stop()
                runs[program.name].append(run)
                note = f"[{index + 1}/{args.repeat}] {count} x {big // MIB} MiB {program.name}"
                harness.step(f"{note}: probe p99 {ms(run.probes, 0.99):.1f} ms, {run.complete} downloads ok")
        lines = report(runs, count, big, probes)
        print("\nTargets (issue 14):\n")
        print("\n".join(lines))
    finally:
        for program in programs:
            program.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
