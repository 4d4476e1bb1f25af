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
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

if __package__:  # imported as benchmarks.proxy (a `fastbody bench` command, say)
    from . import harness
else:  # run as a script: benchmarks/ is sys.path[0] (so never `import uvicorn` in this process)
    import harness

GIB, MIB, KIB, TIMEOUT = harness.GIB, harness.MIB, harness.KIB, harness.TIMEOUT
ROOT, APPS = harness.ROOT, harness.APPS
Program = harness.Program
WrongBytes = harness.WrongBytes
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


# The upstream and the proxies


def upstream_program(workdir: Path, www: Path) -> Program:
    if harness.installed("nginx"):
        template = "proxy_bench_nginx_upstream.conf"
        path = "nginx, sendfile on (the upstream's CPU)"
        return harness.nginx(UPSTREAM, path, workdir, template, ROOT=str(www))
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
    if harness.installed("nginx"):
        template = "proxy_bench_nginx_proxy.conf"
        for name, buffering in ((NGINX_ON, "on"), (NGINX_OFF, "off")):
            values = {"UPSTREAM_PORT": str(upstream), "BUFFERING": buffering}
            found.append(harness.nginx(name, "copy", workdir, template, **values))
    else:
        skipped.append(f"nginx proxy_pass: nginx is not installed (`{INSTALL}`)")
    haproxy = harness.installed("haproxy")
    if haproxy:
        for name, splice, path in (
            (HAPROXY_SPLICE, "option splice-response", "splice (kernel pipes)"),
            (HAPROXY_PLAIN, "# no splice option", "copy"),
        ):
            port = harness.free_port()
            values = {"PORT": str(port), "UPSTREAM_PORT": str(upstream), "SPLICE": splice}
            config = harness.render(
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


def check(program: Program, small: bytes) -> None:
    requests = [("/small", small), ("/tiny", TINY), ("/small", small), ("/small", small)]
    harness.get_kept_alive(program.port, requests)


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
    run = harness.checked_wrk(program, target, seconds, body, program.name)
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
        harness.start_all([upstream], skipped, {UPSTREAM})
        programs += proxies(workdir, upstream.port, skipped)
        required = {FASTBODY, WSGI_GTHREAD, WSGI_SYNC, HTTPX}
        programs = [upstream, *harness.start_all(programs[1:], skipped, required)]
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
