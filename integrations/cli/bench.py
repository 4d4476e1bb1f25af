"""``fastbody bench``: run the side-by-side benchmarks of ``benchmarks/`` on this machine, each
under a progress display and a time limit, and write ``results.md`` (:mod:`.report`) and
``results.png`` (:mod:`.chart`).

Each benchmark is its own script (``benchmarks/gunicorn.py`` ...) run in a child process; its
Markdown tables are kept as printed. On stderr it says how many steps it will take
(``steps: N``) and prints one line per finished step: on a terminal these drive a tqdm bar, in a
log (any stream that is not a terminal) each becomes one plain line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

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
    Benchmark("gunicorn.py", "gunicorn workers", ("--quick", "--repeat", "1"), (), 13, 1500),
    Benchmark("uvicorn.py", "uvicorn and Starlette", ("--quick", "--repeat", "1"), (), 10, 1500),
    Benchmark("proxy.py", "reverse proxies", ("--quick", "--repeat", "1"), (), 6, 1500),
    Benchmark("static.py", "static files and peers", ("--quick", "--repeat", "1"), (), 6, 1200),
    Benchmark("fairness.py", "fairness under 200 downloads", ("--quick", "--repeat", "1"), (), 4, 900),
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
    # --quick: about a minute each on two cores (measured: 42-62 s each, 4 minutes for five)
    minutes = len(suite) if quick else sum(bench.minutes for bench in suite)
    plan = f"fastbody bench: {len(suite)} benchmarks, about {minutes} minutes; results in {out}/"
    print(plan, file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    for index, bench in enumerate(suite):
        output = _run_one(bench, quick, tiny, Progress(f"{index + 1}/{len(suite)} {bench.title}"))
        sections.append(section(bench.title, bench.script, output))
    report = document(sections)
    (out / "results.md").write_text(report)
    draw(parse_rows(report), out / "results.png")
    print(report)
    print(f"fastbody bench: wrote {out / 'results.md'} and {out / 'results.png'}", file=sys.stderr)


def _run_one(bench: Benchmark, quick: bool, tiny: bool, progress: Progress) -> str:
    """Run one benchmark, showing its progress from the lines it prints on stderr. It runs in
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
                progress.line(line.rstrip("\n"))
            output = child.stdout.read()
            child.wait()
        finally:
            watchdog.cancel()
            if child.poll() is None:
                _stop_group(child)
    if child.returncode != 0:
        why = f"stopped after {limit} s" if time.monotonic() - started >= limit else "failed"
        progress.close(f"{why}, exit status {child.returncode}")
        return f"(benchmark {why}, exit status {child.returncode}; partial output below)\n\n{output}"
    progress.close("done")
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


STEPS = re.compile(r"steps: (\d+)")  # a benchmark's announcement of how many steps it takes
STEP = re.compile(r"\[\d+/\d+\] ")  # a finished step: "[round/rounds] what: figures"


class Progress:
    """One benchmark's progress, from the lines it prints on stderr. On a terminal: a tqdm bar
    (steps done of the steps announced, elapsed time and estimate, the last step beside it), other
    lines (warnings, a traceback) printed above it. Anywhere else: one plain line per finished
    step or other line, each whole, with no carriage return."""

    def __init__(self, title: str, stream: TextIO | None = None) -> None:
        self.title, self.stream = title, stream if stream is not None else sys.stderr
        self.started, self.done = time.monotonic(), 0
        self.total: int | None = None
        self.bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

            self.bar = tqdm(desc=title, total=None, unit="step", file=self.stream, dynamic_ncols=True)

    def line(self, text: str) -> None:
        if found := STEPS.fullmatch(text.strip()):
            self.total = int(found[1])
            if self.bar is not None:
                self.bar.reset(total=self.total)
            return
        step = STEP.match(text) is not None
        self.done += step
        if self.bar is None:
            counted = f"{self.done}/{self.total or '?'}, " if step else ""
            print(f"[{self.title}: {counted}{self._elapsed()}] {text}", file=self.stream, flush=True)
        elif step:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        else:
            self.bar.write(text, file=self.stream)

    def close(self, outcome: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(outcome, refresh=False)
            self.bar.close()
        else:
            print(f"[{self.title}: {self._elapsed()}] {outcome}", file=self.stream, flush=True)

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.0f} s"
