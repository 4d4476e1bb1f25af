"""Reverse proxies side by side: proxy CPU per GiB and throughput on 1 GiB, requests/s on 1 MiB.

    .venv/bin/python benchmarks/proxy.py [--quick] [--repeat 3]

One upstream serves a 1 GiB and a 1 MiB file from the page cache with Content-Length (nginx,
``sendfile on``, when installed; else benchmarks/apps/proxy_bench_upstream.py, a blocking
``os.sendfile`` server). In front of it, each on its own port on 127.0.0.1 and with one worker
process (one thread where the server has the setting), so that CPU figures compare:

1. fastbody ``ReverseProxy`` under ``python -m uvicorn --http
   fastbody.integrations.uvicorn:HttpToolsProtocol --loop uvloop`` (body: ``splicesend``);
2. fastbody ``WSGIReverseProxy`` under ``python -m gunicorn --no-control-socket -w 1`` with
   ``-k egg:fastbody#gthread --threads 8`` and with ``-k egg:fastbody#sync``;
3. the usual Python streaming proxy: Starlette + ``httpx.AsyncClient`` (``stream=True``,
   ``StreamingResponse(aiter_raw())``, Content-Length forwarded) under stock uvicorn
   (``--http httptools --loop uvloop``): benchmarks/apps/proxy_bench_httpx.py;
4. when Debian's packages are installed (``apt-get install -y nginx haproxy golang-go``; a peer
   whose program is missing, or fails to build or start, is skipped with a note): nginx
   ``proxy_pass`` (``worker_processes 1``, buffering on, its default, and off), HAProxy
   ``mode http`` (``nbthread 1``) with and without ``option splice-response``, and Go's
   ``httputil.ReverseProxy`` (benchmarks/apps/goproxy/main.go, built into a temporary directory,
   ``GOMAXPROCS=1``). Every proxy keeps up to 32 idle upstream connections.

The CPU is the proxy's own: the run time (CPU clock, ns) of every process of it (gunicorn's
master and worker, nginx's master and worker), all threads, around each request or wrk run.
Scenarios:

A. one GET of the 1 GiB file per run (Connection: close), the client in this process
   (``recv_into``, 1 MiB buffer; status, Content-Length and byte count checked): proxy CPU
   seconds per GiB and MB/s, medians of ``--repeat`` interleaved rounds. The first row is the
   upstream alone (no proxy), its own CPU: what the bytes cost before any proxy touches them;
B. ``wrk -t1 -c8 -d10s`` (keep-alive) on the 1 MiB file through each proxy: requests/s, proxy
   CPU µs per request, wrk's errors; the bytes wrk read are checked against the request count.

Before and after the runs, every proxy is asked for the 1 MiB and a tiny file on one kept-alive
connection and each body compared byte for byte. A wrong byte count anywhere stops the benchmark
with an error. ``--quick``: 64 MiB instead of 1 GiB, 3-second wrk runs (CPU figures then rest on
single short runs: rough). Every wait is bounded; every process started here is stopped by its
pid; the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__:  # imported as benchmarks.proxy (a `fastbody bench` command, say)
    from . import harness
else:  # run as a script: benchmarks/ is sys.path[0] (so never `import uvicorn` in this process)
    import harness

GIB, MIB, KIB, TIMEOUT = harness.GIB, harness.MIB, harness.KIB, harness.TIMEOUT
ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "benchmarks" / "apps"
INSTALL = "apt-get update && apt-get install -y nginx haproxy golang-go"
TINY = b"ok\n"

UPSTREAM = "upstream alone (no proxy)"
FASTBODY = "fastbody ReverseProxy (uvicorn)"
WSGI_GTHREAD = "fastbody WSGIReverseProxy (gunicorn gthread)"
WSGI_SYNC = "fastbody WSGIReverseProxy (gunicorn sync)"
HTTPX = "Starlette + httpx (uvicorn)"
NGINX_ON = "nginx proxy_pass, buffering on"
NGINX_OFF = "nginx proxy_pass, buffering off"
HAPROXY_SPLICE = "HAProxy, splice-response"
HAPROXY_PLAIN = "HAProxy, no splice"
GO = "Go httputil.ReverseProxy"
FASTBODY_PROXIES = (FASTBODY, WSGI_GTHREAD, WSGI_SYNC)


class WrongBytes(RuntimeError):
    """A proxy answered with the wrong status, length or bytes: the benchmark stops."""


# Processes: a proxy (or the upstream) is a child process of this one and its descendants


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    found, index = [pid], 0
    while index < len(found):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found += harness.children(found[index])
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
    """One server started here (a proxy, or the upstream), measured as its whole process tree."""

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

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if harness.fetch(self.port, "/tiny")[0] == 200:
                    time.sleep(0.3)  # gunicorn, nginx: the worker is up; let the tree settle
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

    def cpu(self) -> float:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
        return harness.tree_cpu(process_tree(self.process.pid))  # one that exited meanwhile: 0

    def stop(self) -> None:
        """Terminate the root by its pid; then kill, by pid, any of its descendants that outlive it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.remember()
        harness.stop(self.process, grace=10)
        for pid, started in self.family.items():
            if pid != self.process.pid and started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# The upstream and the proxies


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
    port = harness.free_port()
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would be nobody: no /tmp/... access
    conf = render(template, prefix, "nginx.conf", PORT=str(port), USER=user, **values)
    command = [installed("nginx") or "nginx", "-p", f"{prefix}/", "-c", str(conf)]
    command += ["-e", str(prefix / "error.log"), "-g", "daemon off;"]
    return Program(name, path, command, port, workdir)


def upstream_program(workdir: Path, www: Path) -> Program:
    if installed("nginx"):
        template = "proxy_bench_nginx_upstream.conf"
        return nginx(UPSTREAM, "nginx, sendfile on (the upstream's CPU)", workdir, template, ROOT=str(www))
    port = harness.free_port()
    command = [sys.executable, str(APPS / "proxy_bench_upstream.py"), "--root", str(www), "--port", str(port)]
    return Program(UPSTREAM, "Python blocking os.sendfile (the upstream's CPU)", command, port, workdir)


def uvicorn(name: str, path: str, app: str, http: str, workdir: Path, upstream: int) -> Program:
    port = harness.free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(APPS), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log"]
    command += ["--http", http, "--loop", "uvloop"]
    return Program(name, path, command, port, workdir, {"UPSTREAM": f"http://127.0.0.1:{upstream}"})


def gunicorn(name: str, path: str, worker: list[str], workdir: Path, upstream: int) -> Program:
    port = harness.free_port()
    command = [sys.executable, "-m", "gunicorn", "--no-control-socket", "-w", "1", *worker]
    command += ["-b", f"127.0.0.1:{port}", "--timeout", str(TIMEOUT), "--graceful-timeout", "5"]
    command += ["--log-level", "warning", "--pythonpath", str(APPS), "proxy_bench_fastbody:application"]
    return Program(name, path, command, port, workdir, {"UPSTREAM": f"http://127.0.0.1:{upstream}"})


def build_go(workdir: Path) -> tuple[str | None, str]:
    """Build benchmarks/apps/goproxy/main.go into ``workdir``: (the binary, or None and why not)."""
    go = shutil.which("go") or shutil.which("go", path="/usr/lib/go/bin:/usr/local/go/bin")
    if go is None:
        return None, f"`go` is not installed (`{INSTALL}`)"
    out = workdir / "goproxy" / "goproxy"
    env = {**os.environ, "CGO_ENABLED": "0", "GOPROXY": "off", "GOFLAGS": "", "GOTOOLCHAIN": "local"}
    env |= {"GOCACHE": str(workdir / "goproxy" / "cache"), "GOPATH": str(workdir / "goproxy" / "path")}
    env |= {"GO111MODULE": "auto"}
    try:
        built = subprocess.run(
            [go, "build", "-o", str(out), "main.go"],
            cwd=APPS / "goproxy", env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, "`go build` took over 300 s"
    if built.returncode != 0:
        return None, f"`go build` failed: {(built.stderr or built.stdout).strip()[-300:]}"
    return str(out), ""


def proxies(workdir: Path, upstream: int, skipped: list[str]) -> list[Program]:
    """Every proxy that can run here (not started yet); a peer that cannot goes to ``skipped``."""
    fastbody_http = "fastbody.integrations.uvicorn:HttpToolsProtocol"
    found = [
        uvicorn(FASTBODY, "splicesend", "proxy_bench_fastbody:app", fastbody_http, workdir, upstream),
        gunicorn(WSGI_GTHREAD, "file_wrapper(socket)", ["-k", "egg:fastbody#gthread", "--threads", "8"],
                 workdir, upstream),
        gunicorn(WSGI_SYNC, "file_wrapper(socket)", ["-k", "egg:fastbody#sync"], workdir, upstream),
        uvicorn(HTTPX, "aiter_raw → StreamingResponse (copy)", "proxy_bench_httpx:app", "httptools",
                workdir, upstream),
    ]  # fmt: skip
    if installed("nginx"):
        template = "proxy_bench_nginx_proxy.conf"
        for name, buffering in ((NGINX_ON, "on"), (NGINX_OFF, "off")):
            found.append(
                nginx(name, "copy", workdir, template, UPSTREAM_PORT=str(upstream), BUFFERING=buffering)
            )
    else:
        skipped.append(f"nginx proxy_pass: nginx is not installed (`{INSTALL}`)")
    haproxy = installed("haproxy")
    if haproxy:
        for name, splice, path in (
            (HAPROXY_SPLICE, "option splice-response", "splice (kernel pipes)"),
            (HAPROXY_PLAIN, "# no splice option", "copy"),
        ):
            port = harness.free_port()
            values = {"PORT": str(port), "UPSTREAM_PORT": str(upstream), "SPLICE": splice}
            config = render(
                "proxy_bench_haproxy.cfg", workdir / re.sub(r"\W+", "-", name), "haproxy.cfg", **values
            )
            found.append(Program(name, path, [haproxy, "-db", "-f", str(config)], port, workdir))
    else:
        skipped.append(f"HAProxy: haproxy is not installed (`{INSTALL}`)")
    binary, why = build_go(workdir)
    if binary:
        port = harness.free_port()
        command = [binary, "-listen", f"127.0.0.1:{port}", "-upstream", f"http://127.0.0.1:{upstream}"]
        command += ["-idle", "32"]
        found.append(Program(GO, "copy, 32 KiB buffers", command, port, workdir, {"GOMAXPROCS": "1"}))
    else:
        skipped.append(f"Go httputil.ReverseProxy: {why}")
    return found


# Checking what comes back


def get_kept_alive(port: int, requests: list[tuple[str, bytes]]) -> None:
    """GET each target in turn, on one kept-alive connection while the proxy keeps it open, and
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


def check(program: Program, small: bytes) -> None:
    get_kept_alive(program.port, [("/small", small), ("/tiny", TINY), ("/small", small), ("/small", small)])


def fastbody_stats(program: Program) -> dict[str, int]:
    if program.name not in FASTBODY_PROXIES:
        return {}
    status, text = harness.get_text(program.port, "/__stats")
    if status != 200:
        raise RuntimeError(f"{program.name}: /__stats answered {status}: {text[:200]}")
    return {key: value for key, value in json.loads(text).items() if key in ("sendfile", "splice", "copy")}


@dataclass
class Paths:
    """What fastbody.stats() counted in a fastbody proxy over some runs."""

    moved: dict[str, int] = field(default_factory=dict)

    def add(self, before: dict[str, int], after: dict[str, int]) -> None:
        for key, value in after.items():
            self.moved[key] = self.moved.get(key, 0) + value - before.get(key, 0)

    def describe(self) -> str:
        total = sum(self.moved.values())
        if not total:
            return ""
        shares = [f"{key} {100 * value / total:.0f} %" for key, value in self.moved.items() if value]
        return ": " + ", ".join(shares)


# Scenario A: one big GET per run


def big_bodies(
    programs: list[Program], size: int, repeat: int, checks: list[str], measured: dict[str, float]
) -> None:
    runs: dict[str, list[tuple[float, float]]] = {program.name: [] for program in programs}
    paths = {program.name: Paths() for program in programs}
    for index in range(repeat):  # interleaved, so drift and other load hit every proxy alike
        for program in programs:
            before = fastbody_stats(program)
            run = harness.measure(program, "/big", size)  # status, Content-Length and count checked
            paths[program.name].add(before, fastbody_stats(program))
            runs[program.name].append(run)
            note = f"[{index + 1}/{repeat}] {size // MIB} MiB {program.name}: {run[0]:.3f} s/GiB"
            harness.step(f"{note}, {run[1]:.0f} MB/s")
    cpu = {name: statistics.median(run[0] for run in cell) for name, cell in runs.items()}
    rate = {name: statistics.median(run[1] for run in cell) for name, cell in runs.items()}
    measured.update({f"cpu {name}": value for name, value in cpu.items()})
    print(f"\n### A. one {size // MIB} MiB GET per run, through each proxy\n")
    print(f"Connection: close, client `recv_into` in the benchmark process; medians of {repeat} interleaved")
    print(f"runs. CPU: the proxy's own processes' run time ({harness.CPU_CLOCK}) per GiB;")
    print(f"{os.cpu_count()} CPUs shared by client, proxy and upstream, 127.0.0.1.\n")
    harness.table(
        "proxy", "body path", "throughput MB/s", "proxy CPU s/GiB (min-max)", "CPU ÷ fastbody uvicorn"
    )
    for program in programs:
        cell = runs[program.name]
        low, high = min(run[0] for run in cell), max(run[0] for run in cell)
        versus = "—" if program.name == UPSTREAM else f"{harness.ratio(cpu[program.name], cpu[FASTBODY]):.2f}"
        path = program.path + paths[program.name].describe()
        cells = [program.name, path, f"{rate[program.name]:.0f}"]
        harness.row(*cells, f"{cpu[program.name]:.3f} ({low:.3f}-{high:.3f})", versus)


# Scenario B: wrk on the 1 MiB body


@dataclass(frozen=True)
class WrkRun:
    rate: float  # requests/s
    cpu_us: float  # proxy CPU µs per request
    errors: str


def run_wrk(program: Program, target: str, seconds: int, body: int) -> WrkRun:
    """``wrk -t1 -c8`` on ``target``; the bytes wrk read must match the requests it counted."""
    run = harness.wrk(program, target, seconds)
    # wrk counts complete responses; it also read (part of) up to 8 more, and prints 3 digits.
    low, high = 0.99 * run.requests * body, 1.01 * (run.requests + 8) * (body + 1024)
    if run.requests and not low <= run.read <= high:
        raise WrongBytes(
            f"{program.name}: wrk read {run.read:.0f} bytes in {run.requests} responses of {body}"
        )
    return WrkRun(run.rate, run.cpu_us, run.errors)


def small_bodies(
    programs: list[Program], seconds: int, repeat: int, checks: list[str], measured: dict[str, float]
) -> None:
    runs: dict[str, list[WrkRun]] = {program.name: [] for program in programs}
    paths = {program.name: Paths() for program in programs}
    for index in range(repeat):
        for program in programs:
            before = fastbody_stats(program)
            run = run_wrk(program, "/small", seconds, MIB)
            paths[program.name].add(before, fastbody_stats(program))
            runs[program.name].append(run)
            note = f"[{index + 1}/{repeat}] wrk 1 MiB {program.name}: {run.rate:.0f} req/s"
            harness.step(f"{note}, {run.cpu_us:.0f} µs/request, errors: {run.errors}")
    rate = {name: statistics.median(run.rate for run in cell) for name, cell in runs.items()}
    measured.update({f"rate {name}": value for name, value in rate.items()})
    print(f"\n### B. wrk -t1 -c8 -d{seconds}s on the 1 MiB body (keep-alive), medians of {repeat} runs\n")
    columns = ["proxy", "body path", "requests/s (min-max)", "proxy CPU µs/request", "wrk errors"]
    harness.table(*columns, "req/s ÷ Starlette + httpx")
    for program in programs:
        cell = runs[program.name]
        low, high = min(run.rate for run in cell), max(run.rate for run in cell)
        cpu = statistics.median(run.cpu_us for run in cell)
        errors = "; ".join(sorted({run.errors for run in cell} - {"none"})) or "none"
        versus = "—" if program.name == UPSTREAM else f"{harness.ratio(rate[program.name], rate[HTTPX]):.2f}"
        path = program.path + paths[program.name].describe()
        rates = f"{rate[program.name]:.0f} ({low:.0f}-{high:.0f})"
        harness.row(program.name, path, rates, f"{cpu:.0f}", errors, versus)
        if errors != "none" and program.name != UPSTREAM:
            checks.append(f"- wrk through {program.name}: no errors ({errors}) — DID NOT HOLD")


# The report


def expectations(measured: dict[str, float], checks: list[str], big: int) -> None:
    """The issue's expectations, for each fastbody proxy that was measured."""
    mib = big // MIB
    for name in FASTBODY_PROXIES:
        mine = measured.get(f"cpu {name}")
        if mine is None:
            continue
        splice, httpx = measured.get(f"cpu {HAPROXY_SPLICE}"), measured[f"cpu {HTTPX}"]
        label = f"{mib} MiB: {name} CPU/GiB ÷ HAProxy splice-response CPU/GiB"
        if splice is None:
            checks.append(f"- {label}: not measured (HAProxy skipped)")
        elif not mine or not splice:
            checks.append(f"- {label}: not measured (a proxy used no measurable CPU)")
        else:
            value = harness.ratio(mine, splice)
            checks.append(harness.verdict(label, value, value <= 1.0, "≤ 1.00"))
        label = f"{mib} MiB: {name} CPU/GiB ÷ Starlette + httpx CPU/GiB"
        if not mine or not httpx:
            checks.append(f"- {label}: not measured (a proxy used no measurable CPU)")
        else:
            value = harness.ratio(mine, httpx)
            checks.append(harness.verdict(label, value, value <= 0.2, "≤ 0.20, 5x lower"))
        if f"rate {name}" in measured:
            value = harness.ratio(measured[f"rate {name}"], measured[f"rate {HTTPX}"])
            label = f"1 MiB, wrk -c 8: {name} req/s ÷ Starlette + httpx req/s"
            checks.append(harness.verdict(label, value, value >= 3.0, "≥ 3.00"))


def start_all(programs: list[Program], skipped: list[str], required: set[str]) -> list[Program]:
    """Start every program; a peer that does not come up is skipped, a fastbody one is an error."""
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of 1 GiB, 3-second wrk runs")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests: 4 MiB, 1 s
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of each scenario; medians")
    args = parser.parse_args(argv)
    size, wrk_seconds = (64 * MIB, 3) if args.quick else (GIB, 10)
    if args.tiny:
        size, wrk_seconds = 4 * MIB, 1
    workdir = Path(tempfile.mkdtemp(prefix="fastbody-proxy-bench-", dir="/tmp"))
    workdir.chmod(0o755)
    programs: list[Program] = []
    checks: list[str] = []
    skipped: list[str] = []
    measured: dict[str, float] = {}
    try:
        www = workdir / "www"
        www.mkdir()
        Path(harness.make_file(str(workdir), size)).rename(www / "big")
        Path(harness.make_file(str(workdir), MIB)).rename(www / "small")
        (www / "tiny").write_bytes(TINY)
        small = (www / "small").read_bytes()
        upstream = upstream_program(workdir, www)
        programs = [upstream]
        start_all([upstream], skipped, {UPSTREAM})
        programs += proxies(workdir, upstream.port, skipped)
        programs = [upstream, *start_all(programs[1:], skipped, {FASTBODY, WSGI_GTHREAD, WSGI_SYNC, HTTPX})]
        for program in programs:
            check(program, small)
        print(f"Upstream: {upstream.path.split(' (')[0]}; files from the page cache; all on 127.0.0.1.")
        print("Proxies: one process each (gunicorn: master + 1 worker; nginx: master + 1 worker), CPU summed")
        print("over all of a proxy's processes; every proxy keeps up to 32 idle upstream connections.")
        harness.steps(args.repeat * len(programs) * (2 if shutil.which("wrk") else 1))
        big_bodies(programs, size, args.repeat, checks, measured)
        if shutil.which("wrk"):
            small_bodies(programs, wrk_seconds, args.repeat, checks, measured)
        else:
            print("\n### B. skipped: wrk is not installed (`apt-get install -y wrk`)")
        for program in programs:
            check(program, small)
        if skipped:
            print("\nSkipped:\n")
            print("\n".join(f"- {note}" for note in skipped))
        expectations(measured, checks, size)
        checks.append(
            "- every response checked (status, Content-Length, byte count; kept-alive bodies byte for byte)"
            " — held"
        )
        print("\nExpectations (issue 5):\n")
        print("\n".join(checks))
    finally:
        for program in programs:
            program.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
