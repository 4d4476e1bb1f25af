"""What the server benchmarks share: a CPU clock per process, a raw-socket client, a feeder,
wrk, tables.

The benchmarks (``gunicorn.py``, ``uvicorn.py``, ``proxy.py``) start real servers as child
processes on 127.0.0.1 and measure, from this process, the server's own CPU (the run time of the
process that serves, all its threads, dead ones included, to the nanosecond: see
``worker_cpu``) around each request or wrk run. A server is anything with a ``port`` and a
``cpu()`` (see ``Measured``). Every wait here is bounded by ``TIMEOUT``; processes started here
are stopped by their pid.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import socket
import struct
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
TIMEOUT = 120  # seconds any one wait (start, request, feeder, wrk) may take
CPU_CLOCK = "the kernel's per-process CPU clock, ns"  # how the tables say where CPU comes from
FORK = multiprocessing.get_context("fork")
SMALL = (KIB, 16 * KIB, MIB)  # the wrk body sizes


class Measured(Protocol):
    """A server under test: where it listens and the CPU seconds its serving process used so far."""

    port: int

    def cpu(self) -> float: ...


def worker_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` has run so far: all its threads, dead ones included, to the
    nanosecond. This is the kernel's CPU clock of that process (the clock ``clock_getcpuclockid(3)``
    names; the same run time ``/proc/PID/task/*/schedstat`` shows per live thread), read while
    the server runs. ``/proc/PID/stat``'s utime+stime come in 1/100 s ticks, which made a 64 MiB
    request cost 0 or 0.16 s/GiB; ``getrusage(RUSAGE_CHILDREN)`` counts only reaped children."""
    try:
        return time.clock_gettime(process_clock(pid))
    except OSError as error:  # no such process (any more): as /proc would say
        raise ProcessLookupError(pid) from error


def process_clock(pid: int) -> int:
    """The clock id of ``pid``'s CPU clock: Linux's ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``,
    which is what glibc's ``clock_getcpuclockid`` returns (Python has no binding for it)."""
    return ((~pid) << 3) | 2


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of a process tree, summed over the given pids; one that exited meanwhile counts 0."""
    total = 0.0
    for pid in pids:
        with suppress(ProcessLookupError):
            total += worker_cpu(pid)
    return total


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def free_port() -> int:
    """A free port on 127.0.0.1 (a small race, fine on a quiet host)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes], grace: float = 15) -> None:
    """Terminate a child by its pid, kill it if it lingers past ``grace`` seconds, reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def fetch(port: int, target: str, expect: int | None = None) -> tuple[int, int, float]:
    """GET ``target`` (Connection: close) and drain the body: (status, body bytes, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(None)  # blocking recv_into, bounded by the kernel
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", TIMEOUT, 0))
        start = time.perf_counter()
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        buffer = memoryview(bytearray(MIB))
        head = b""
        while b"\r\n\r\n" not in head and (got := sock.recv_into(buffer)):
            head += bytes(buffer[:got])
        head, _, rest = head.partition(b"\r\n\r\n")
        total = len(rest)
        while got := sock.recv_into(buffer):
            total += got
        seconds = time.perf_counter() - start
    status = int(head.split(b" ", 2)[1]) if head else 0
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if expect is not None and (status != 200 or total != expect or not length or int(length[1]) != expect):
        raise RuntimeError(f"GET {target}: status {status}, {total} body bytes, expected {expect}")
    return status, total, seconds


def get_text(port: int, target: str) -> tuple[int, str]:
    """GET a small ``target`` (Connection: close): (status, body as text)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while data := sock.recv(64 * KIB):
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    return (int(head.split(b" ", 2)[1]) if head else 0), body.decode(errors="replace")


def feeder_main(listener: socket.socket, size: int) -> None:
    """Write ``size`` bytes in 64 KiB chunks to the first connection, then close."""
    conn = listener.accept()[0]
    with conn:
        conn.settimeout(TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = memoryview(b"\xa5" * (64 * KIB))
        for _ in range(size // len(data)):
            conn.sendall(data)


def measure(server: Measured, target: str, size: int, feed: bool = False) -> tuple[float, float]:
    """One request: (server CPU seconds per GiB, MB/s). ``feed``: a feeder process listens and
    will write ``size`` bytes to whoever connects; the target gets ``&port=N&size=S``."""
    listener, feeder = None, None
    if feed:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(TIMEOUT)
        target += f"&port={listener.getsockname()[1]}&size={size}"
        feeder = FORK.Process(target=feeder_main, args=(listener, size), daemon=True)
        feeder.start()
    try:
        before = server.cpu()
        _, _, seconds = fetch(server.port, target, size)
        time.sleep(0.05)  # the worker finishes closing the request
        used = server.cpu() - before
    finally:
        if feeder is not None:
            feeder.join(10)
            if feeder.is_alive():
                feeder.kill()
                feeder.join()
        if listener is not None:
            listener.close()
    return used * GIB / size, size / seconds / 1e6


@dataclass(frozen=True)
class Wrk:
    """What one ``wrk -t1 -c8`` run measured."""

    rate: float  # requests/s
    requests: int
    read: float  # bytes wrk read (to 3 digits, as it prints them)
    cpu_us: float  # the server's CPU µs per request
    errors: str


_UNITS = {"": 1, "K": KIB, "M": MIB, "G": GIB, "T": GIB * KIB}


def wrk(server: Measured, target: str, seconds: int) -> Wrk:
    """``wrk -t1 -c8`` on ``target``, with the server's CPU measured around it."""
    url = f"http://127.0.0.1:{server.port}{target}"
    before = server.cpu()
    command = ["wrk", "-t1", "-c8", f"-d{seconds}s", "--timeout", "10s", url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    used = server.cpu() - before
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    done = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)([KMGT]?)B read", out)
    if not rate or not done:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    requests = int(done[1])
    errors = [m.group(0) for m in re.finditer(r"(Socket errors:.*|Non-2xx or 3xx responses: \d+)", out)]
    read = float(done[2]) * _UNITS[done[3]]
    return Wrk(float(rate[1]), requests, read, used * 1e6 / max(requests, 1), "; ".join(errors) or "none")


def run_wrk(server: Measured, target: str, seconds: int) -> tuple[float, float, str]:
    """wrk -t1 -c8 on ``target``: (requests/s, server CPU µs per request, errors)."""
    run = wrk(server, target, seconds)
    return run.rate, run.cpu_us, run.errors


def make_file(directory: str, size: int) -> str:
    path = os.path.join(directory, f"body-{size}.bin")
    block = os.urandom(min(size, MIB))
    with open(path, "wb") as file:
        for offset in range(0, size, len(block)):
            file.write(block[: size - offset])
    with open(path, "rb") as file:  # read once so every run is served from the page cache
        while file.read(MIB):
            pass
    return path


def size_label(size: int) -> str:
    return f"{size // KIB} KiB" if size < MIB else f"{size // MIB} MiB"


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; inf when the denominator measured nothing."""
    return numerator / denominator if denominator else float("inf")


def verdict(label: str, ratio: float, ok: bool, expected: str) -> str:
    return f"- {label}: {ratio:.2f} (expected {expected}) — {'held' if ok else 'DID NOT HOLD'}"


def steps(total: int) -> None:
    """Tell ``fastbody bench`` how many steps (progress lines on stderr) this run will print."""
    print(f"steps: {total}", file=sys.stderr, flush=True)


def step(note: str) -> None:
    """One finished step, on stderr: ``fastbody bench`` draws its progress from these lines."""
    print(note, file=sys.stderr, flush=True)


def table(*columns: str) -> None:
    """Print a Markdown table's head."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def row(*cells: str, flush: bool = False) -> None:
    print("| " + " | ".join(cells) + " |", flush=flush)
