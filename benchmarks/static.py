"""Static files side by side in one run: ``fastbody serve`` against granian, stock uvicorn, nginx
and a raw ``os.sendfile`` floor: requests/s on small files, server CPU per GiB on a big one.

    .venv/bin/python benchmarks/static.py [--quick] [--repeat 3] [--big-repeat 7]

One directory (files of 1 KiB, 16 KiB, 1 MiB and 1 GiB, read once so that every run is served
from the page cache) served on 127.0.0.1, each server with one worker process:

1. ``fastbody serve DIR`` (``python -m fastbody serve``: uvicorn, fastbody's ``AutoProtocol``,
   fastbody's ``StaticFiles``; ``--no-access-log``);
2. granian (``granian --interface asgi --workers 1 --loop uvloop``, one runtime thread) serving
   Starlette's ``StaticFiles`` (its ``FileResponse`` sends ``http.response.pathsend``, which
   granian serves from Rust), and serving fastbody's ``StaticFiles`` (granian advertises
   ``pathsend`` and no socket: ``ZeroCopyResponse`` sends ``pathsend`` too);
3. stock uvicorn (``--http httptools --loop uvloop``) serving Starlette's ``StaticFiles``;
4. nginx (``worker_processes 1``, ``sendfile on``, ``access_log off``; benchmarks/apps/
   proxy_bench_nginx_upstream.conf), when installed;
5. the floor: benchmarks/apps/static_bench_floor.py, one thread, fixed heads, files opened
   once, ``send(head, MSG_MORE)`` and a blocking ``os.sendfile`` loop.

The apps are benchmarks/apps/static_bench_app.py. A peer that is not installed or does not start
is skipped with a note (and how to install it); ``fastbody serve`` failing is an error. Every
server is first asked for each file on one kept-alive connection and the bodies compared byte
for byte. Then, interleaved over ``--repeat`` rounds (medians and min-max shown):

A. one GET of the 1 GiB file per run (Connection: close; client ``recv_into`` in this process,
   status, Content-Length and byte count checked): the server's CPU seconds per GiB, summed over
   its process tree (nginx's master and worker, granian's and uvicorn's processes: the kernel's
   CPU clock of each, ns), and MB/s;
B. ``wrk -t1 -c8 -d5s`` (keep-alive) on each small file: requests/s and server CPU µs per
   request (the bytes wrk read checked against its request count).

Read the ratios as: ``÷ granian`` is against granian + Starlette StaticFiles (the issue's
reference), ``÷ nginx`` and ``÷ floor`` against those rows; CPU ratios under 1 and request-rate
ratios over 1 favour the row. The client (this process, or wrk), and every server share the
machine's CPUs, so request rates move with other load; the CPU per GiB is the server's own.

The big file gets ``--big-repeat`` rounds (default 7, at least ``--repeat``; ``--quick`` too,
with its 256 MiB file; one with ``--tiny``): one GET costs about a second, and on a shared 2-core
VM one run's CPU per GiB moves by up to ±30 %, so the median of three is not enough to tell 1.2x
from 1.4x.

``--quick``: a 256 MiB big file, 3-second wrk runs (with ``--repeat 1``: rough wrk rows).
Every wait is bounded; every process started here is stopped by its pid (also on Ctrl-C); the
temporary directory is removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__:  # imported as benchmarks.static (a `fastbody bench` command, say)
    from . import harness
else:  # run as a script: benchmarks/ is sys.path[0] (so never `import uvicorn` in this process)
    import harness

GIB, MIB, KIB, SMALL = harness.GIB, harness.MIB, harness.KIB, harness.SMALL
APPS = harness.APPS
INSTALL_NGINX = "apt-get update && apt-get install -y nginx"
INSTALL_GRANIAN = "pip install granian"
INSTALL_WRK = "apt-get update && apt-get install -y wrk"

SERVE = "fastbody serve"
GRANIAN = "granian + Starlette StaticFiles"
GRANIAN_FASTBODY = "granian + fastbody StaticFiles"
STOCK = "stock uvicorn + Starlette StaticFiles"
NGINX = "nginx, sendfile on"
FLOOR = "raw os.sendfile loop (floor)"


# The servers


def fastbody_serve(www: Path, workdir: Path) -> harness.Program:
    port = harness.free_port()
    command = [sys.executable, "-m", "fastbody", "serve", str(www), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    how = "uvicorn, AutoProtocol (httptools, uvloop), fastbody StaticFiles"
    return harness.Program(SERVE, how, command, port, workdir)


def granian_binary() -> str | None:
    """granian's command beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "granian"
    return str(beside) if beside.exists() else shutil.which("granian")


def granian(name: str, factory: str, binary: str, www: Path, workdir: Path) -> harness.Program:
    port = harness.free_port()
    command = [binary, "--interface", "asgi", "--workers", "1", "--runtime-threads", "1"]
    command += ["--loop", "uvloop", "--no-ws", "--log-level", "warning", "--no-access-log"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--working-dir", str(APPS), "--factory"]
    env = {"FASTBODY_BENCH_STATIC": str(www)}
    return harness.Program(name, "ASGI, http.response.pathsend", [*command, factory], port, workdir, env)


def stock_uvicorn(www: Path, workdir: Path) -> harness.Program:
    port = harness.free_port()
    command = [sys.executable, "-m", "uvicorn", "static_bench_app:starlette_static", "--factory"]
    command += ["--app-dir", str(APPS), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--http", "httptools", "--loop", "uvloop", "--log-level", "warning", "--no-access-log"]
    env = {"FASTBODY_BENCH_STATIC": str(www)}
    return harness.Program(STOCK, "FileResponse: thread reads, transport writes", command, port, workdir, env)


def floor(www: Path, workdir: Path) -> harness.Program:
    port = harness.free_port()
    command = [sys.executable, str(APPS / "static_bench_floor.py"), "--port", str(port), "--root", str(www)]
    return harness.Program(FLOOR, "fixed head, blocking sendfile", command, port, workdir)


def servers(www: Path, workdir: Path, skipped: list[str]) -> list[harness.Program]:
    """Every server that can run here (not started yet); a missing peer goes to ``skipped``."""
    found = [fastbody_serve(www, workdir)]
    binary = granian_binary()
    if binary:
        found.append(granian(GRANIAN, "static_bench_app:starlette_static", binary, www, workdir))
        found.append(granian(GRANIAN_FASTBODY, "static_bench_app:fastbody_static", binary, www, workdir))
    else:
        skipped.append(f"granian: not installed (`{INSTALL_GRANIAN}`)")
    found.append(stock_uvicorn(www, workdir))
    if harness.installed("nginx"):
        template = "proxy_bench_nginx_upstream.conf"
        found.append(harness.nginx(NGINX, "sendfile, 1 worker", workdir, template, ROOT=str(www)))
    else:
        skipped.append(f"nginx: not installed (`{INSTALL_NGINX}`)")
    found.append(floor(www, workdir))
    return found


# The figures


@dataclass(frozen=True)
class Figure:
    """The medians (and spread) of one server's runs of one measurement."""

    median: float
    low: float
    high: float

    @staticmethod
    def of(values: list[float]) -> Figure:
        return Figure(statistics.median(values), min(values), max(values))


def versus(figures: dict[str, Figure], name: str, other: str) -> str:
    """``name``'s median ÷ ``other``'s, as a table cell ("—" when either is missing or the row is it)."""
    if name == other or other not in figures or not figures[other].median:
        return "—"
    return f"{harness.ratio(figures[name].median, figures[other].median):.2f}"


def ratio_cells(figures: dict[str, Figure], name: str) -> list[str]:
    return [versus(figures, name, other) for other in (GRANIAN, NGINX, FLOOR)]


def big_file(
    programs: list[harness.Program], target: str, size: int, repeat: int
) -> tuple[dict[str, Figure], dict[str, Figure]]:
    """Scenario A: (CPU s/GiB, MB/s) per server."""
    runs: dict[str, list[tuple[float, float]]] = {program.name: [] for program in programs}
    for index in range(repeat):  # interleaved, so drift and other load hit every server alike
        for program in programs:
            run = harness.measure(program, target, size)  # status, Content-Length and count checked
            runs[program.name].append(run)
            harness.step(f"[{index + 1}/{repeat}] {size // MIB} MiB {program.name}: {run[0]:.3f} s/GiB")
    cpu = {name: Figure.of([run[0] for run in cell]) for name, cell in runs.items()}
    rate = {name: Figure.of([run[1] for run in cell]) for name, cell in runs.items()}
    print(f"\n### A. one {size // MIB} MiB GET per run, server CPU per GiB\n")
    print(f"Connection: close, client `recv_into` in the benchmark process; medians of {repeat} interleaved")
    print(f"runs. CPU: the server's processes' run time ({harness.CPU_CLOCK}) per GiB;")
    print(f"{os.cpu_count()} CPUs shared by client and server, 127.0.0.1.\n")
    harness.table(
        "server", "how", "throughput MB/s", "server CPU s/GiB (min-max)", "÷ granian", "÷ nginx", "÷ floor"
    )
    for program in programs:
        low, high = cpu[program.name].low, cpu[program.name].high
        cells = [program.name, program.path, f"{rate[program.name].median:.0f}"]
        cells.append(f"{cpu[program.name].median:.3f} ({low:.3f}-{high:.3f})")
        harness.row(*cells, *ratio_cells(cpu, program.name))
    return cpu, rate


def small_files(
    programs: list[harness.Program], targets: dict[int, str], seconds: int, repeat: int
) -> dict[int, dict[str, Figure]]:
    """Scenario B: requests/s per body size and server."""
    runs: dict[tuple[int, str], list[harness.Wrk]] = {}
    for index in range(repeat):
        for body, target in targets.items():
            for program in programs:
                run = harness.checked_wrk(program, target, seconds, body, program.name)
                runs.setdefault((body, program.name), []).append(run)
                note = f"[{index + 1}/{repeat}] wrk {harness.size_label(body)} {program.name}"
                harness.step(f"{note}: {run.rate:.0f} req/s, {run.cpu_us:.0f} µs/request")
    print(f"\n### B. wrk -t1 -c8 -d{seconds}s on small files (keep-alive), medians of {repeat} runs\n")
    columns = ["body", "server", "requests/s (min-max)", "server CPU µs/request", "wrk errors"]
    harness.table(*columns, "÷ granian", "÷ nginx", "÷ floor")
    rates: dict[int, dict[str, Figure]] = {}
    for body in targets:
        rates[body] = {
            program.name: Figure.of([run.rate for run in runs[body, program.name]]) for program in programs
        }
        for program in programs:
            cell, rate = runs[body, program.name], rates[body][program.name]
            cpu = statistics.median(run.cpu_us for run in cell)
            errors = "; ".join(sorted({run.errors for run in cell} - {"none"})) or "none"
            cells = [
                harness.size_label(body),
                program.name,
                f"{rate.median:.0f} ({rate.low:.0f}-{rate.high:.0f})",
            ]
            harness.row(*cells, f"{cpu:.0f}", errors, *ratio_cells(rates[body], program.name))
    return rates


# The targets (issue 14)


def target(
    label: str, figures: dict[str, Figure], name: str, other: str, ok: Callable[[float], bool], expected: str
) -> str:
    """One target line: ``name`` ÷ ``other`` held or not, or why it was not measured."""
    for needed in (name, other):
        if needed not in figures:
            return f"- {label}: not measured ({needed} was skipped)"
    if not figures[other].median:
        return f"- {label}: not measured ({other} measured nothing)"
    value = harness.ratio(figures[name].median, figures[other].median)
    return harness.verdict(label, value, ok(value), expected)


def shown(label: str, figures: dict[str, Figure], name: str, other: str) -> str:
    """A ratio the issue asks to be reported, with no threshold."""
    if name not in figures or other not in figures or not figures[other].median:
        return f"- {label}: not measured"
    return (
        f"- {label}: {harness.ratio(figures[name].median, figures[other].median):.2f} (reported, no target)"
    )


def targets(cpu: dict[str, Figure], rates: dict[int, dict[str, Figure]], big: int) -> list[str]:
    mib = f"{big // MIB} MiB"
    lines = []
    if KIB in rates:
        lines.append(
            target(
                f"1 KiB: {SERVE} req/s ÷ {GRANIAN}", rates[KIB], SERVE, GRANIAN, lambda v: v >= 1.0, "≥ 1.00"
            )
        )
    if MIB in rates:
        lines.append(
            target(
                f"1 MiB: {SERVE} req/s ÷ {GRANIAN}", rates[MIB], SERVE, GRANIAN, lambda v: v >= 1.2, "≥ 1.20"
            )
        )
    lines.append(target(f"{mib}: {SERVE} CPU/GiB ÷ {FLOOR}", cpu, SERVE, FLOOR, lambda v: v <= 1.2, "≤ 1.20"))
    lines.append(
        target(f"{mib}: {SERVE} CPU/GiB ÷ {GRANIAN}", cpu, SERVE, GRANIAN, lambda v: v < 1.0, "< 1.00")
    )
    lines.append(shown(f"{mib}: {SERVE} CPU/GiB ÷ {NGINX}", cpu, SERVE, NGINX))
    for body, figures in rates.items():
        label = f"{harness.size_label(body)}: {SERVE} req/s ÷ {NGINX}"
        lines.append(shown(label, figures, SERVE, NGINX))
    for body, figures in rates.items():  # fastbody's StaticFiles against Starlette's, the same server
        label = f"{harness.size_label(body)}: {GRANIAN_FASTBODY} req/s ÷ {GRANIAN}"
        lines.append(target(label, figures, GRANIAN_FASTBODY, GRANIAN, lambda v: v >= 1.0, "≥ 1.00"))
    return lines


# The run


def make_tree(www: Path, big: int) -> dict[str, bytes]:
    """The files every server serves: the small ones and ``tiny`` (kept, for the byte checks), and
    the big one (not kept). Returns {target: bytes} of the small ones."""
    www.mkdir()
    kept: dict[str, bytes] = {}
    for size in SMALL:
        path = Path(harness.make_file(str(www), size))
        kept[f"/{path.name}"] = path.read_bytes()
    (www / "tiny").write_bytes(b"ok\n")
    kept["/tiny"] = b"ok\n"
    harness.make_file(str(www), big)
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 256 MiB big file, 3-second wrk runs")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke tests: 4 MiB, 1 s
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds of each scenario; medians")
    parser.add_argument("--big-repeat", type=int, default=7, help="big-file rounds (>= --repeat)")
    parser.add_argument("--wrk-seconds", type=int, default=None, help="length of each wrk run (default 5)")
    args = parser.parse_args(argv)
    big, seconds = (256 * MIB, 3) if args.quick else (GIB, 5)
    if args.tiny:
        big, seconds = 4 * MIB, 1
    seconds = args.wrk_seconds or seconds
    workdir = Path(tempfile.mkdtemp(prefix="fastbody-static-bench-", dir="/tmp"))
    workdir.chmod(0o755)  # nginx's worker may run as another user
    programs: list[harness.Program] = []
    skipped: list[str] = []
    try:
        www = workdir / "www"
        kept = make_tree(www, big)
        programs = servers(www, workdir, skipped)
        programs = harness.start_all(programs, skipped, {SERVE})
        for program in programs:
            harness.get_kept_alive(program.port, [*kept.items(), *kept.items()])
        has_wrk = shutil.which("wrk") is not None
        big_rounds = 1 if args.tiny else max(args.big_repeat, args.repeat)
        harness.steps(len(programs) * (big_rounds + args.repeat * (len(SMALL) if has_wrk else 0)))
        print("Servers: one worker process each, on 127.0.0.1; files from the page cache; every body")
        print("checked byte for byte before the runs (small files) or by count (the big one).")
        cpu, _ = big_file(programs, f"/body-{big}.bin", big, big_rounds)
        rates: dict[int, dict[str, Figure]] = {}
        if has_wrk:
            small_targets = {size: f"/body-{size}.bin" for size in SMALL}
            rates = small_files(programs, small_targets, seconds, args.repeat)
        else:
            print(f"\n### B. skipped: wrk is not installed (`{INSTALL_WRK}`)")
        if skipped:
            print("\nSkipped:\n")
            print("\n".join(f"- {note}" for note in skipped))
        print("\nTargets (issue 14):\n")
        print("\n".join(targets(cpu, rates, big)))
    finally:
        for program in programs:
            program.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
