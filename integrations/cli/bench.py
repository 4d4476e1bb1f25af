"""``fastbody bench``: run the side-by-side benchmarks of ``benchmarks/`` on this machine, each
under a progress bar and a time limit, and write ``results.md`` (:mod:`.report`) and
``results.png`` (:mod:`.chart`).

Each benchmark is its own script (``benchmarks/gunicorn.py`` ...) run in a child process; its
Markdown tables are kept as printed.
"""

from __future__ import annotations

import os
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

from .chart import draw
from .report import document, parse_rows, section
from .usage import UsageError

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
        output = _run_one(bench, quick, tiny, index, len(suite))
        sections.append(section(bench.title, bench.script, output))
    report = document(sections)
    (out / "results.md").write_text(report)
    draw(parse_rows(report), out / "results.png")
    print(report)
    print(f"fastbody bench: wrote {out / 'results.md'} and {out / 'results.png'}", file=sys.stderr)


def _run_one(bench: Benchmark, quick: bool, tiny: bool, index: int, total: int) -> str:
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
