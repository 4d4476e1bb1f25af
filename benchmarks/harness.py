"""What the server benchmarks share: a CPU clock per process, what a process holds (fds, pipes,
RSS), a raw-socket client, a feeder, wrk, tables.

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
import shutil
import signal
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


@dataclass(frozen=True)
class Held:
    """What a process holds now: its open fds, how many of them are pipes, its RSS in MiB."""

    fds: int
    pipes: int
    rss_mib: float

    def __str__(self) -> str:
        return f"{self.fds}/{self.pipes}/{self.rss_mib:.0f}"


def held(pid: int) -> Held:
    """``pid``'s holdings from ``/proc/PID``: every fd in ``fd/`` (one closed while listed is not
    counted), those whose link is ``pipe:[...]``, and ``VmRSS`` from ``status``. A process that is
    gone is a ``ProcessLookupError``."""
    fds = pipes = 0
    try:
        names = os.listdir(f"/proc/{pid}/fd")
        for name in names:
            with suppress(FileNotFoundError):
                pipes += os.readlink(f"/proc/{pid}/fd/{name}").startswith("pipe:")
                fds += 1
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError as error:
        raise ProcessLookupError(pid) from error
    rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return Held(fds, pipes, int(rss[1]) / KIB if rss else 0.0)


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


# Servers started as programs (``proxy.py``, ``static.py``, ``fairness.py``): each is a child
# process of the benchmark, measured as its whole process tree, stopped by pid

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "benchmarks" / "apps"


class WrongBytes(RuntimeError):
    """A server answered with the wrong status, length or bytes: the benchmark stops."""


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    found, index = [pid], 0
    while index < len(found):
        with suppress(FileNotFoundError, ProcessLookupError):
            found += children(found[index])
        index += 1
    return found


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a pid from its reuse)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


class Program:
    """One server started here (a proxy, a peer, the upstream), measured as its whole process tree."""

    def __init__(
        self,
        name: str,
        path: str,
        command: list[str],
        port: int,
        logs: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.path, self.command, self.port = name, path, command, port  # path: for the tables
        self.log = logs / (re.sub(r"[^\w.]+", "-", name).strip("-") + ".log")
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.family: dict[int, int | None] = {}  # every pid seen in its tree, with its start time

    def start(self) -> None:
        with open(self.log, "wb") as log:  # cwd: never benchmarks/, whose uvicorn.py would shadow uvicorn
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env
            )

    def wait_ready(self, target: str = "/tiny") -> None:
        assert self.process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if fetch(self.port, target)[0] == 200:
                    time.sleep(0.3)  # gunicorn, nginx, granian: the worker is up; let the tree settle
                    self.remember()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")

    def remember(self) -> None:
        assert self.process is not None
        for pid in process_tree(self.process.pid):
            self.family.setdefault(pid, start_time(pid))

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else "(no log)"

    def pids(self) -> list[int]:
        """The pids of its tree now (for strace, py-spy)."""
        assert self.process is not None
        return process_tree(self.process.pid)

    def cpu(self) -> float:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
        return tree_cpu(process_tree(self.process.pid))  # one that exited meanwhile: 0

    def stop(self) -> None:
        """Terminate the root by its pid; then kill, by pid, any of its descendants that outlive it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.remember()
        stop(self.process, grace=10)
        for pid, started in self.family.items():
            if pid != self.process.pid and started is not None and start_time(pid) == started:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def start_all(programs: list[Program], skipped: list[str], required: set[str]) -> list[Program]:
    """Start every program; a peer that does not come up is stopped and noted in ``skipped``,
    one named in ``required`` is an error. Returns those running."""
    for program in programs:
        program.start()
    running = []
    for program in programs:
        try:
            program.wait_ready()
            running.append(program)
        except RuntimeError as error:
            program.stop()
            if program.name in required:
                raise
            skipped.append(f"{program.name}: did not start ({str(error).splitlines()[-1][:200]})")
    return running


def render(template: str, directory: Path, name: str, **values: str) -> Path:
    """benchmarks/apps/``template`` with its ``@NAME@`` words filled in, written to ``directory/name``."""
    text = (APPS / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if left := re.findall(r"@[A-Z_]+@", text):
        raise RuntimeError(f"{template}: {left} not filled in")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory / name


def installed(program: str) -> str | None:
    """The path of a Debian program (``/usr/sbin`` is not on every PATH), or None."""
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")


def nginx(name: str, path: str, workdir: Path, template: str, **values: str) -> Program:
    """nginx with a config from ``template``, in its own prefix directory under ``workdir``."""
    prefix = workdir / re.sub(r"\W+", "-", name)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would be nobody: no /tmp/... access
    conf = render(template, prefix, "nginx.conf", PORT=str(port), USER=user, **values)
    command = [installed("nginx") or "nginx", "-p", f"{prefix}/", "-c", str(conf)]
    command += ["-e", str(prefix / "error.log"), "-g", "daemon off;"]
    return Program(name, path, command, port, workdir)


def get_kept_alive(port: int, requests: list[tuple[str, bytes]]) -> None:
    """GET each target in turn, on one kept-alive connection while the server keeps it open, and
    compare status, Content-Length and every body byte; raise WrongBytes on any difference."""
    sock: socket.socket | None = None
    try:
        for target, expected in requests:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                reader = sock.makefile("rb")
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            status_line = reader.readline(64 * KIB)
            fields: dict[bytes, bytes] = {}
            while (line := reader.readline(64 * KIB)) not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            status = int(status_line.split(b" ", 2)[1]) if status_line.count(b" ") else 0
            length = fields.get(b"content-length")
            body = reader.read(int(length)) if length and length.isdigit() else b""
            if status != 200 or length is None or body != expected:
                why = f"status {status}, Content-Length {length!r}, {len(body)} body bytes"
                same = "the same bytes" if body == expected else "different bytes"
                raise WrongBytes(f"GET {target}: {why} ({same}), expected 200 and {len(expected)} bytes")
            if fields.get(b"connection", b"").lower() == b"close":
                reader.close()
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()


def checked_wrk(server: Measured, target: str, seconds: int, body: int, name: str = "") -> Wrk:
    """``wrk -t1 -c8`` on ``target``; the bytes wrk read must match the requests it counted
    (bodies of ``body`` bytes), else WrongBytes."""
    run = wrk(server, target, seconds)
    # wrk counts complete responses; it also read (part of) up to 8 more, and prints 3 digits.
    low, high = 0.99 * run.requests * body, 1.01 * (run.requests + 8) * (body + 1024)
    if run.requests and not low <= run.read <= high:
        raise WrongBytes(
            f"{name or target}: wrk read {run.read:.0f} bytes in {run.requests} responses of {body}"
        )
    return run


def percentile(values: list[float], fraction: float) -> float:
    """The value at ``fraction`` (0.99: p99) of the sorted values, nearest rank; nan for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]
