"""fastbody's uvicorn protocol against stock uvicorn: server CPU per GiB, requests/s, loop latency.

    .venv/bin/python benchmarks/uvicorn.py [--quick] [--repeat 3] [--loop uvloop|asyncio]

Two servers side by side on 127.0.0.1, each ``python -m uvicorn --workers 1`` (one process)
serving benchmarks/apps/uvicorn_bench_app.py: stock ``--http httptools`` and fastbody's
``--http fastbody.integrations.uvicorn:HttpToolsProtocol``, both ``--loop uvloop`` unless
``--loop asyncio``. The app code is the same for both. This process is the client
(``recv_into``, byte counts and Content-Length checked); the CPU is the uvicorn process's
run time (its CPU clock, ns: all its threads, FileResponse's thread pool included) around
each request or run. Scenarios:

1. a 1 GiB file (page cache) by Starlette's ``FileResponse(path)``: stock reads 64 KiB chunks in
   a thread and writes them through the transport; fastbody's protocol advertises
   ``http.response.pathsend``, so Starlette sends that and the server uses sendfile. The floor
   row is a forked helper in this process serving the same file with a blocking ``os.sendfile``
   loop over a plain socket, its CPU measured the same way;
2. 1 GiB that a feeder process writes into a socket in 64 KiB chunks: stock relays it with a
   ``StreamingResponse`` of 64 KiB ``loop.sock_recv`` chunks, fastbody with
   ``ZeroCopyResponse(sock, count=N)`` (``fastbody.response.splicesend``, spliced);
3. ``wrk -t1 -c8 -d10s`` on 1 KiB, 16 KiB and 1 MiB ``FileResponse`` files (keep-alive); then,
   under each server, fastbody's ``StaticFiles`` against Starlette's and ``ZeroCopyResponse``
   against ``FileResponse`` on the same files, each pair run back to back (the order flips
   every round) and compared within the pair: the ratio of the two, per pair, then medians;
4. 200 concurrent 16 MiB ``FileResponse`` downloads (raw asyncio sockets in this process,
   bodies read and discarded, every byte counted) while a probe process GETs ``/tiny`` (2
   bytes) every 20 ms on its own keep-alive connection: how responsive the loop stays.

``--quick``: 64 MiB bodies, 3-second wrk runs, 50 concurrent 4 MiB downloads. Runs are
interleaved over ``--repeat`` rounds and medians shown. Every wait is bounded; every process
started here is stopped by its pid; the temporary files are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.uvicorn (a `fastbody bench` command, say)
    from . import harness
else:  # run as a script: benchmarks/ is sys.path[0] (so never `import uvicorn` in this process)
    import harness

GIB, MIB, SMALL, TIMEOUT = harness.GIB, harness.MIB, harness.SMALL, harness.TIMEOUT
ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "benchmarks" / "apps"
PROBE_INTERVAL = 0.02  # seconds between the starts of two probe requests
STOCK, FASTBODY, RAW = "stock uvicorn", "fastbody uvicorn", "raw os.sendfile"


@dataclass(frozen=True)
class Kind:
    name: str
    http: str


KINDS = (
    Kind(STOCK, "httptools"),
    Kind(FASTBODY, "fastbody.integrations.uvicorn:HttpToolsProtocol"),
)


class Server:
    """One uvicorn process (a child of this process): with ``--workers 1`` it serves by itself."""

    def __init__(self, kind: Kind, loop: str, logs: Path, static: Path | None = None) -> None:
        self.name = kind.name
        self.port = harness.free_port()
        command = [sys.executable, "-m", "uvicorn", "uvicorn_bench_app:app", "--app-dir", str(APPS)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        command += ["--log-level", "warning", "--no-access-log", "--http", kind.http, "--loop", loop]
        self.log = logs / f"{kind.name.replace(' ', '-')}.log"
        env = {**os.environ, "FASTBODY_BENCH_STATIC": str(static)} if static is not None else None
        with open(self.log, "wb") as log:  # cwd: never benchmarks/, whose uvicorn.py is this file
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if harness.fetch(self.port, "/tiny")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()[-2000:]}")

    def cpu(self) -> float:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited ({self.process.returncode}):\n{self.log.read_text()[-2000:]}"
            )
        return harness.worker_cpu(self.process.pid)

    def stop(self) -> None:
        harness.stop(self.process)


def raw_sendfile_main(listener: socket.socket, path: str) -> None:
    """Answer every GET with the file at ``path``: head by ``sendall``, body by blocking sendfile."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode()
        while True:
            conn = listener.accept()[0]
            with conn:
                conn.settimeout(None)  # blocking, bounded by the kernel: a timeout makes it non-blocking
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", TIMEOUT, 0))
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", TIMEOUT, 0))
                request = b""
                while b"\r\n\r\n" not in request and (data := conn.recv(4096)):
                    request += data
                conn.sendall(head)
                offset = 0
                while offset < size and (
                    sent := os.sendfile(conn.fileno(), file.fileno(), offset, size - offset)
                ):
                    offset += sent


class RawSendfile:
    """The floor: a forked helper serving the big file with a plain blocking ``os.sendfile`` loop."""

    name = RAW

    def __init__(self, path: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.process = harness.FORK.Process(target=raw_sendfile_main, args=(self.listener, path), daemon=True)
        self.process.start()

    def cpu(self) -> float:
        assert self.process.pid is not None
        return harness.worker_cpu(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.listener.close()


# Scenario 4: many downloads at once, and a probe of the loop's latency beside them


def probe_main(port: int, ready: Event, done: Event, results: Connection) -> None:
    """GET /tiny every PROBE_INTERVAL on one keep-alive connection until ``done``; send back
    ([(time.monotonic() at the start, latency in seconds)], failed probes)."""
    latencies: list[tuple[float, float]] = []
    failures = 0
    sock: socket.socket | None = None
    request = b"GET /tiny HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        while not done.is_set():
            start, started = time.perf_counter(), time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(request)
                response = b""
                while b"\r\n\r\n" not in response:
                    if not (data := sock.recv(4096)):
                        raise ConnectionError("the server closed the probe connection")
                    response += data
                head, _, body = response.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                while length and len(body) < int(length[1]):
                    if not (data := sock.recv(4096)):
                        raise ConnectionError("the server closed the probe connection")
                    body += data
                if not head.startswith(b"HTTP/1.1 200") or body != b"ok":
                    raise ConnectionError(f"unexpected probe response {response[:80]!r}")
                latencies.append((started, time.perf_counter() - start))
            except OSError:
                failures += 1
                if sock is not None:
                    sock.close()
                sock = None
            ready.set()
            done.wait(max(0.0, PROBE_INTERVAL - (time.perf_counter() - start)))
    finally:
        if sock is not None:
            sock.close()
        results.send((latencies, failures))
        results.close()


async def download(port: int, target: str, size: int, buffer: memoryview) -> int:
    """GET ``target`` (Connection: close) on a non-blocking socket: the body bytes received.
    ``buffer`` is shared by all downloads: the body is counted, never looked at."""
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = f"GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
        await loop.sock_sendall(sock, request)
        head = b""
        while b"\r\n\r\n" not in head:
            if not (data := await loop.sock_recv(sock, 64 << 10)):  # its own bytes: the head is read
                break
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        total = len(rest)
        while got := await loop.sock_recv_into(sock, buffer):
            total += got
    status = int(head.split(b" ", 2)[1]) if head else 0
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if status != 200 or total != size or not length or int(length[1]) != size:
        raise RuntimeError(f"GET {target}: status {status}, {total} body bytes, expected {size}")
    return total


async def downloads(port: int, target: str, size: int, count: int) -> list[int | BaseException]:
    buffer = memoryview(bytearray(MIB))
    tasks = [asyncio.ensure_future(download(port, target, size, buffer)) for _ in range(count)]
    _, pending = await asyncio.wait(tasks, timeout=2 * TIMEOUT)
    for task in pending:  # still running at the deadline: they count as failed
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return [outcome(task) for task in tasks]


def outcome(task: asyncio.Future[int]) -> int | BaseException:
    if task.cancelled():  # still running at the deadline
        return TimeoutError("the download did not finish in time")
    return task.exception() or task.result()


def run_loop(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
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


@dataclass
class Crowd:
    complete: int  # downloads that got every byte
    seconds: float
    moved: int  # body bytes received, all downloads
    cpu_per_gib: float
    probes: list[float]  # latencies (seconds) of the probes that overlapped the downloads
    probe_failures: int  # probes that got no answer (whole run)


def crowd(server: Server, target: str, size: int, count: int) -> Crowd:
    """``count`` concurrent downloads of ``target`` while a probe process measures /tiny."""
    ready, done = harness.FORK.Event(), harness.FORK.Event()
    receiver, sender = harness.FORK.Pipe(duplex=False)
    probe = harness.FORK.Process(target=probe_main, args=(server.port, ready, done, sender), daemon=True)
    probe.start()
    sender.close()
    try:
        if not ready.wait(10):
            raise RuntimeError(f"{server.name}: the probe got no answer")
        time.sleep(0.2)  # a few probes of the idle server first
        before = server.cpu()
        start, started = time.perf_counter(), time.monotonic()
        results = run_loop(lambda: downloads(server.port, target, size, count))
        seconds, ended = time.perf_counter() - start, time.monotonic()
        time.sleep(0.05)  # the server finishes closing the connections
        used = server.cpu() - before
    finally:
        done.set()
        timed: tuple[list[tuple[float, float]], int] = ([], 0)
        if receiver.poll(30):
            timed = receiver.recv()
        receiver.close()
        probe.join(10)
        if probe.is_alive():
            probe.kill()
            probe.join()
    moved = sum(result for result in results if isinstance(result, int))
    complete = sum(result == size for result in results)
    failed = [result for result in results if isinstance(result, BaseException)]
    if failed:
        print(f"{server.name}: {len(failed)} downloads failed, e.g. {failed[0]!r}", file=sys.stderr)
    during = [latency for at, latency in timed[0] if at <= ended and at + latency >= started]
    return Crowd(complete, seconds, moved, used * GIB / max(moved, 1), during, timed[1])


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# The report


def big_bodies(
    servers: list[Server], raw: RawSendfile, big: str, size: int, repeat: int, checks: list[str]
) -> None:
    file_target, socket_target = f"/file?path={big}", "/socket?zc="
    cases = {"file": [raw, *servers], "socket": servers}
    results: dict[str, dict[str, list[tuple[float, float]]]] = {key: {} for key in cases}
    for index in range(repeat):  # interleaved, so drift and other load hit every server alike
        for key, measured in cases.items():
            for server in measured:
                if key == "file":
                    run = harness.measure(server, file_target, size)
                else:
                    target = socket_target + ("1" if server.name == FASTBODY else "")
                    run = harness.measure(server, target, size, feed=True)
                results[key].setdefault(server.name, []).append(run)
                note = f"[{index + 1}/{repeat}] {key} {server.name}: {run[0]:.3f} s/GiB"
                harness.step(f"{note}, {run[1]:.0f} MB/s")
    via = harness.get_text(servers[1].port, "/via")[1]
    print(f"\nOne request per run (Connection: close), medians of {repeat} runs. CPU: the serving")
    print(f"process's own run time ({harness.CPU_CLOCK}) per GiB; {os.cpu_count()} CPUs, 127.0.0.1.")
    paths = {
        "file": {
            RAW: "blocking os.sendfile loop (the floor)",
            STOCK: "64 KiB thread reads, transport writes",
            FASTBODY: "http.response.pathsend → sendfile",
        },
        "socket": {
            STOCK: "StreamingResponse, 64 KiB sock_recv",
            FASTBODY: f"{via}(sock, count) → splice",
        },
    }
    titles = {
        "file": f"1. {size // MIB} MiB file, Starlette FileResponse(path), the same app code",
        "socket": f"2. {size // MIB} MiB socket body, a feeder process writes 64 KiB chunks",
    }
    for key, runs in results.items():
        cpu = {name: statistics.median(run[0] for run in name_runs) for name, name_runs in runs.items()}
        rate = {name: statistics.median(run[1] for run in name_runs) for name, name_runs in runs.items()}
        print(f"\n### {titles[key]}\n")
        columns = ["server", "body path", "throughput MB/s", "server CPU s/GiB (min-max)", "CPU vs stock"]
        harness.table(*columns, *(["CPU vs raw sendfile"] if RAW in runs else []))
        for name, name_runs in runs.items():
            low, high = min(run[0] for run in name_runs), max(run[0] for run in name_runs)
            versus = "baseline" if name == STOCK else f"{harness.ratio(cpu[name], cpu[STOCK]):.3f}"
            cells = [name, paths[key][name], f"{rate[name]:.0f}", f"{cpu[name]:.3f} ({low:.3f}-{high:.3f})"]
            cells += [versus, *([f"{harness.ratio(cpu[name], cpu[RAW]):.2f}"] if RAW in runs else [])]
            harness.row(*cells)
        if key == "file":
            versus_stock, versus_raw = (
                harness.ratio(cpu[FASTBODY], cpu[STOCK]),
                harness.ratio(cpu[FASTBODY], cpu[RAW]),
            )
            label = "FileResponse: fastbody CPU/GiB ÷ stock CPU/GiB"
            checks.append(harness.verdict(label, versus_stock, versus_stock <= 1 / 20, "≤ 0.05, 20x lower"))
            label = "FileResponse: fastbody CPU/GiB ÷ raw os.sendfile CPU/GiB"
            if cpu[RAW]:
                checks.append(harness.verdict(label, versus_raw, versus_raw <= 1.5, "≤ 1.50"))
            else:  # the floor measured no CPU at all
                checks.append(f"- {label}: not measured (raw sendfile used no measurable CPU)")


def small_bodies(
    servers: list[Server], small: dict[int, str], seconds: int, repeat: int, checks: list[str]
) -> None:
    runs: dict[tuple[int, str], list[tuple[float, float, str]]] = {}
    for index in range(repeat):
        for body, path in small.items():
            for server in servers:
                run = harness.run_wrk(server, f"/file?path={path}", seconds)
                runs.setdefault((body, server.name), []).append(run)
                note = f"[{index + 1}/{repeat}] wrk {harness.size_label(body)} {server.name}"
                harness.step(f"{note}: {run[0]:.0f} req/s, {run[1]:.0f} µs/request")
    print(f"\n### 3. wrk -t1 -c8 -d{seconds}s, FileResponse files (keep-alive), medians of {repeat} runs\n")
    columns = ["body", "server", "requests/s (min-max)", "server CPU µs/request", "wrk errors"]
    harness.table(*columns, "fastbody/stock req/s")
    for body in small:
        label, rates = harness.size_label(body), {}
        for server in servers:
            cell = runs[body, server.name]
            rates[server.name] = statistics.median(run[0] for run in cell)
            cpu = statistics.median(run[1] for run in cell)
            errors = "; ".join(sorted({run[2] for run in cell} - {"none"})) or "none"
            low, high = min(run[0] for run in cell), max(run[0] for run in cell)
            versus = "baseline"
            if server.name == FASTBODY:
                versus = f"{harness.ratio(rates[FASTBODY], rates[STOCK]):.2f}"
                verdict = harness.ratio(rates[FASTBODY], rates[STOCK])
                name = f"{label} FileResponse: fastbody req/s ÷ stock req/s"
                checks.append(harness.verdict(name, verdict, verdict >= 1.0, "≥ 1.00"))
            cells = [label, server.name, f"{rates[server.name]:.0f} ({low:.0f}-{high:.0f})", f"{cpu:.0f}"]
            harness.row(*cells, errors, versus)


RESPONSES = (
    # (comparison, fastbody's route, Starlette's route) for one file: the bench app's
    ("StaticFiles: fastbody ÷ Starlette", "/static/{name}", "/starlette-static/{name}"),
    ("ZeroCopyResponse ÷ FileResponse", "/zc?path={path}", "/file?path={path}"),
)


def response_classes(
    servers: list[Server], small: dict[int, str], seconds: int, repeat: int, checks: list[str]
) -> None:
    """fastbody's response classes against Starlette's on the same file under the same server:
    each pair back to back, fastbody's first in odd rounds and second in even ones, so that
    load from elsewhere hits a pair's two runs alike; compared by the ratio within each pair."""
    runs: dict[tuple[int, str, str], list[tuple[float, float, str]]] = {}
    for index in range(repeat):
        for body, path in small.items():
            for server in servers:
                for label, ours, theirs in RESPONSES:
                    name = os.path.basename(path)
                    targets = [target.format(name=name, path=path) for target in (ours, theirs)]
                    order = [0, 1] if index % 2 == 0 else [1, 0]
                    got: dict[int, tuple[float, float, str]] = {}
                    for side in order:
                        got[side] = harness.run_wrk(server, targets[side], seconds)
                    errors = "; ".join(sorted({got[0][2], got[1][2]} - {"none"})) or "none"
                    runs.setdefault((body, server.name, label), []).append((got[0][0], got[1][0], errors))
                    note = f"[{index + 1}/{repeat}] wrk {harness.size_label(body)} {server.name} {label}"
                    harness.step(f"{note}: {got[0][0]:.0f} ÷ {got[1][0]:.0f} req/s")
    print(f"\n### 3b. The response classes, wrk -t1 -c8 -d{seconds}s, pairs back to back, {repeat} rounds\n")
    print("fastbody's StaticFiles (its defaults: br/gz siblings looked up, Cache-Control) against")
    print("Starlette's StaticFiles, and ZeroCopyResponse(path) against FileResponse(path), on the same file")
    print("under the same server. The ratio is taken within each pair (its two runs back to back).\n")
    # No "server" column: these rows are ratios of responses, not servers, and stay off the chart.
    columns = ["body", "under", "comparison", "fastbody req/s", "Starlette req/s", "ratio (min-max)"]
    harness.table(*columns, "wrk errors")
    for (body, under, label), cell in runs.items():
        ratios = [harness.ratio(mine, peer) for mine, peer, _ in cell]
        ratio = statistics.median(ratios)
        mine, peer = (statistics.median(run[side] for run in cell) for side in (0, 1))
        errors = "; ".join(sorted({run[2] for run in cell} - {"none"})) or "none"
        cells = [harness.size_label(body), under, label, f"{mine:.0f}", f"{peer:.0f}"]
        harness.row(*cells, f"{ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f})", errors)
        verdict = f"{harness.size_label(body)} {label} under {under}, req/s"
        checks.append(harness.verdict(verdict, ratio, ratio >= 1.0, "≥ 1.00"))


def many_downloads(
    servers: list[Server], path: str, size: int, count: int, repeat: int, checks: list[str]
) -> None:
    runs: dict[str, list[Crowd]] = {server.name: [] for server in servers}
    for index in range(repeat):
        for server in servers:
            run = crowd(server, f"/file?path={path}", size, count)
            runs[server.name].append(run)
            note = f"[{index + 1}/{repeat}] {count} x {size // MIB} MiB {server.name}: {run.seconds:.1f} s"
            p99 = percentile(run.probes, 0.99) * 1e3
            harness.step(f"{note}, {run.cpu_per_gib:.3f} s/GiB, probe p99 {p99:.1f} ms")
    print(f"\n### 4. {count} concurrent {size // MIB} MiB FileResponse downloads, medians of {repeat} runs\n")
    print(f"A probe process GETs /tiny (2 bytes) every {PROBE_INTERVAL * 1e3:.0f} ms on its own keep-alive")
    print("connection; the latencies are those of the probes that overlapped the downloads.\n")
    columns = ["server", "complete downloads", "total s", "MB/s, all", "server CPU s/GiB"]
    harness.table(*columns, "probe p50 ms", "probe p99 ms", "probe max ms", "probes (failed)")
    for server in servers:
        cell = runs[server.name]

        def median(pick: Callable[[Crowd], float], cell: list[Crowd] = cell) -> float:
            return statistics.median(pick(run) for run in cell)

        complete = f"{min(run.complete for run in cell)}/{count}"
        cells = [server.name, complete, f"{median(lambda run: run.seconds):.2f}"]
        cells.append(f"{median(lambda run: run.moved / run.seconds / 1e6):.0f}")
        cells.append(f"{median(lambda run: run.cpu_per_gib):.3f}")
        for fraction in (0.5, 0.99, 1.0):
            cells.append(f"{median(lambda run, f=fraction: percentile(run.probes, f) * 1e3):.1f}")
        cells.append(f"{median(lambda run: len(run.probes)):.0f} ({sum(run.probe_failures for run in cell)})")
        harness.row(*cells)
        whole = sum(run.complete == count for run in cell)
        label = (
            f"- {count} concurrent downloads, {server.name}: every byte arrived in {whole} of {repeat} runs"
        )
        checks.append(f"{label} — {'held' if whole == repeat else 'DID NOT HOLD'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB bodies, 3-second wrk runs, 50 x 4 MiB")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests: 4 MiB, 1 s
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians shown")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="both servers' loop")
    args = parser.parse_args(argv)
    size, wrk_seconds = (64 * MIB, 3) if args.quick else (GIB, 10)
    crowd_size, crowd_count = (4 * MIB, 50) if args.quick else (16 * MIB, 200)
    if args.tiny:
        size, wrk_seconds, crowd_size, crowd_count = 4 * MIB, 1, MIB, 10
    install = "apt-get update && apt-get install -y wrk"
    if shutil.which("wrk") is None:
        print(f"wrk not found (install it: `{install}`); skipping the wrk rows.", file=sys.stderr)
    workdir = tempfile.mkdtemp(prefix="fastbody-uvicorn-bench-", dir="/tmp")
    servers: list[Server] = []
    raw: RawSendfile | None = None
    checks: list[str] = []
    try:
        big = harness.make_file(workdir, size)
        small = {body: harness.make_file(workdir, body) for body in SMALL}
        crowd_file = harness.make_file(workdir, crowd_size) if crowd_size not in SMALL else small[crowd_size]
        raw = RawSendfile(big)  # forked before anything else runs here: no threads, no loop
        servers = [Server(kind, args.loop, Path(workdir), static=Path(workdir)) for kind in KINDS]
        for server in servers:
            server.wait_ready()
        wrk_steps = len(SMALL) * len(servers) * (1 + len(RESPONSES)) if shutil.which("wrk") is not None else 0
        harness.steps(args.repeat * (1 + 2 * len(servers) + wrk_steps + len(servers)))
        print(f"Servers: uvicorn --workers 1 --loop {args.loop}; stock --http httptools, fastbody --http")
        print("fastbody.integrations.uvicorn:HttpToolsProtocol; the same Starlette app.")
        big_bodies(servers, raw, big, size, args.repeat, checks)
        if shutil.which("wrk") is not None:
            small_bodies(servers, small, wrk_seconds, args.repeat, checks)
            # Half-length runs: two per pair, four pairs per body and server.
            response_classes(servers, small, max(1, wrk_seconds // 2), args.repeat, checks)
        else:
            print(f"\n### 3. skipped: wrk is not installed (`{install}`)")
        many_downloads(servers, crowd_file, crowd_size, crowd_count, args.repeat, checks)
        print("\nExpectations (issue 4):\n")
        print("\n".join(checks))
    finally:
        for server in servers:
            server.stop()
        if raw is not None:
            raw.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
