"""``fastbody bench``: run the side-by-side benchmarks of ``benchmarks/`` on this machine and
write what they measured as Markdown (``results.md``) and a chart (``results.png``).

Each benchmark is its own script (``benchmarks/gunicorn.py`` ...) run in a child process; its
Markdown tables are kept as printed, and the rows with a throughput (MB/s) and a CPU s/GiB column
are drawn: one group of bars per scenario, stock and fastbody (and peers) side by side.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import fastbody

from .cli import UsageError

BENCHMARKS = Path(fastbody.__file__).resolve().parent.parent / "benchmarks"


@dataclass(frozen=True)
class Benchmark:
    script: str
    title: str
    quick: tuple[str, ...]
    full: tuple[str, ...]
    minutes: int  # the full run's usual length on a 2-core machine
    limit: int  # seconds after which the full run is stopped


SUITE = (
    Benchmark("gunicorn.py", "gunicorn workers", ("--quick", "--repeat", "1"), (), 3, 1500),
    Benchmark("uvicorn.py", "uvicorn and Starlette", ("--quick", "--repeat", "1"), (), 4, 1500),
    Benchmark("proxy.py", "reverse proxies", ("--quick", "--repeat", "1"), (), 6, 1500),
)
QUICK_LIMIT = 180
"""Seconds one benchmark may run with --quick (or --tiny) before it is stopped."""


@dataclass(frozen=True)
class Row:
    scenario: str
    server: str
    mb_s: float
    cpu_s_per_gib: float


def run_bench(*, quick: bool, out: Path, tiny: bool = False) -> None:
    if not BENCHMARKS.is_dir():
        raise UsageError(f"needs the benchmarks/ of a source checkout (looked in {BENCHMARKS})")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("needs matplotlib for the chart: pip install 'fastbody[bench]'") from None
    suite = [bench for bench in SUITE if (BENCHMARKS / bench.script).exists()]
    minutes = "under 2 minutes" if quick else f"about {sum(bench.minutes for bench in suite)} minutes"
    print(f"fastbody bench: {len(suite)} benchmarks, {minutes}; results in {out}/", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    for index, bench in enumerate(suite):
        output = _run(bench, quick, tiny, index, len(suite))
        sections.append(f"## {bench.title} (`benchmarks/{bench.script}`)\n\n{output.strip()}\n")
    report = "# fastbody bench\n\n" + _machine() + "\n".join(sections)
    (out / "results.md").write_text(report)
    rows = parse_rows(report)
    draw(rows, out / "results.png")
    print(report)
    print(f"fastbody bench: wrote {out / 'results.md'} and {out / 'results.png'}", file=sys.stderr)


def _run(bench: Benchmark, quick: bool, tiny: bool, index: int, total: int) -> str:
    """Run one benchmark, drawing a progress bar from the lines it prints on stderr. It runs in
    its own process group, so that past its time limit it and every server it started are
    stopped together."""
    arguments = ("--tiny", "--repeat", "1") if tiny else bench.quick if quick else bench.full
    command = [sys.executable, str(BENCHMARKS / bench.script), *arguments]
    limit = QUICK_LIMIT if quick else bench.limit
    started = time.monotonic()
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=BENCHMARKS.parent,
        start_new_session=True,
    ) as child:
        assert child.stderr is not None and child.stdout is not None
        watchdog = threading.Timer(limit, _stop_group, (child,))
        watchdog.start()
        try:
            for line in child.stderr:
                _progress(bench, index, total, time.monotonic() - started, line.strip())
            output = child.stdout.read()
            child.wait()
        finally:
            watchdog.cancel()
            if child.poll() is None:
                _stop_group(child)
    print(file=sys.stderr)
    if child.returncode != 0:
        why = f"stopped after {limit} s" if time.monotonic() - started >= limit else "failed"
        return f"(benchmark {why}, exit status {child.returncode}; partial output below)\n\n{output}"
    return output


def _stop_group(child: subprocess.Popen[str]) -> None:
    """SIGTERM the benchmark's process group, then SIGKILL what is left after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        try:
            child.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


def _progress(bench: Benchmark, index: int, total: int, elapsed: float, line: str) -> None:
    width = 24
    done = int(width * index / total)
    bar = "#" * done + ">" + "." * (width - done - 1)
    text = f"\r[{bar}] {index + 1}/{total} {bench.title} {elapsed:4.0f}s  {line[:60]:<60}"
    columns = shutil.get_terminal_size((100, 20)).columns
    print(text[:columns], end="", file=sys.stderr, flush=True)


def _machine() -> str:
    import platform

    return f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.\n\n"


# The rows to draw


def parse_rows(markdown: str) -> list[Row]:
    """Rows of every table that has a server column, an MB/s column and a CPU s/GiB column."""
    rows: list[Row] = []
    section = scenario = ""
    header: list[str] | None = None
    for line in markdown.splitlines():
        if line.startswith("## "):  # one benchmark's output: its scenarios may repeat another's titles
            section, header = line[3:].split(" (`")[0].strip(), None
        elif line.startswith("#"):
            title = line.lstrip("# ").strip()
            scenario, header = f"{section}: {title}" if section else title, None
        elif line.startswith("|") and header is None:
            header = [cell.strip().lower() for cell in line.strip("|").split("|")]
        elif line.startswith("|") and header is not None and not set(line) <= set("|-: "):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            row = _row(scenario, header, cells)
            if row is not None:
                rows.append(row)
        elif not line.startswith("|"):
            header = None
    return rows


def _row(scenario: str, header: list[str], cells: list[str]) -> Row | None:
    def column(*words: str) -> int | None:
        return next((i for i, name in enumerate(header) if all(word in name for word in words)), None)

    server = column("server")
    server = column("proxy") if server is None else server
    rate, cpu = column("mb/s"), column("s/gib")
    if server is None or rate is None or cpu is None or len(cells) != len(header):
        return None
    numbers = [re.match(r"[\d.]+", cells[index]) for index in (rate, cpu)]
    if not all(numbers):
        return None
    return Row(scenario, cells[server], float(numbers[0][0]), float(numbers[1][0]))  # type: ignore[index]


def draw(rows: list[Row], path: Path) -> None:
    """Two panels (throughput, server CPU per GiB), one group of bars per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(row.scenario for row in rows))
    height = max(3.0, 0.45 * len(rows) + 0.6 * len(scenarios))
    figure, (rates, cpus) = plt.subplots(1, 2, figsize=(13, height), sharey=True)
    labels, positions, colors, mb_s, cpu = [], [], [], [], []
    position = 0.0
    for scenario in scenarios:  # each bar's value, label and place from the same row
        for row in (row for row in rows if row.scenario == scenario):
            labels.append(f"{scenario[:46]} · {row.server}")
            positions.append(position)
            colors.append(_color(row.server))
            mb_s.append(row.mb_s)
            cpu.append(row.cpu_s_per_gib)
            position += 1
        position += 0.6
    rates.barh(positions, mb_s, color=colors)
    cpus.barh(positions, cpu, color=colors)
    rates.set_yticks(positions, labels, fontsize=7)
    rates.invert_yaxis()
    rates.set_xlabel("throughput, MB/s (higher is better)")
    cpus.set_xlabel("server CPU seconds per GiB (lower is better)")
    figure.suptitle("fastbody vs stock servers and peers on this machine")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _color(server: str) -> str:
    name = server.lower()
    if "fastbody" in name:
        return "#1f77b4"
    if "stock" in name or "starlette" in name:
        return "#ff7f0e"
    return "#7f7f7f"
