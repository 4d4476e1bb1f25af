"""``fastbody bench``'s parts: the CPU reader of the benchmarks, the report's rows, the chart and
the progress display."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from resources import harness

from fastbody.integrations.cli.bench import SUITE, Progress
from fastbody.integrations.cli.report import Row, parse_rows

REPO = Path(__file__).resolve().parent.parent


BUSY = """
import os, sys, threading, time
def spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
worker = threading.Thread(target=spin, args=(0.15,))  # a thread that is gone when measured
worker.start(); worker.join()
spin(0.15)
print("spun", flush=True)
sys.stdin.read()  # idle until the test closes stdin
os._exit(0)  # no interpreter teardown: exiting costs next to nothing
"""


def test_cpu_of_a_running_child_matches_its_rusage_when_it_exits() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", BUSY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "spun\n"
        measured = harness.worker_cpu(child.pid)
    finally:
        child.stdin.close()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, nobody else's
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0
    final = usage.ru_utime + usage.ru_stime
    assert measured >= 0.3  # both threads' spins, the exited thread's included
    assert final - 0.005 <= measured <= final + 0.001  # exiting cost a little more, never less


def test_cpu_resolution_is_finer_than_a_clock_tick() -> None:
    readings = set()
    for _ in range(50):
        sum(range(20_000))  # a few hundred µs of CPU
        readings.add(harness.worker_cpu(os.getpid()))
    assert len(readings) > 10  # 1/100 s ticks would give one or two values over these few ms


def test_cpu_of_a_gone_process_is_a_lookup_error() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        harness.worker_cpu(child.pid)
    assert harness.tree_cpu([child.pid, os.getpid()]) > 0  # the gone one counts 0


# The report and the chart

REPORT = """# fastbody bench

## uvicorn and Starlette (`benchmarks/uvicorn.py`)

### 1. 1024 MiB file, Starlette FileResponse(path), the same app code

| server | body path | throughput MB/s | server CPU s/GiB (min-max) | CPU vs stock |
|---|---|---|---|---|
| raw os.sendfile | blocking os.sendfile loop (the floor) | 2532 | 0.410 (0.410-0.420) | 0.218 |
| stock uvicorn | 64 KiB thread reads, transport writes | 516 | 1.880 (1.720-1.970) | baseline |
| fastbody uvicorn | http.response.pathsend → sendfile | 3067 | 0.320 (0.260-0.340) | 0.170 |

### 3. wrk -t1 -c8 -d10s, FileResponse files (keep-alive), medians of 3 runs

| body | server | requests/s (min-max) | server CPU µs/request | wrk errors | fastbody/stock req/s |
|---|---|---|---|---|---|
| 1 KiB | stock uvicorn | 1673 (1556-1696) | 684 | none | baseline |
| 1 KiB | fastbody uvicorn | 2926 (2897-3196) | 362 | none | 1.75 |

## reverse proxies (`benchmarks/proxy.py`)

### A. one 1024 MiB GET per run, through each proxy

| proxy | body path | throughput MB/s | proxy CPU s/GiB (min-max) | CPU ÷ fastbody uvicorn |
|---|---|---|---|---|
| fastbody WSGIReverseProxy (gunicorn gthread) | file_wrapper(socket): splice 100 % | 2072 | 0.290 | 1.04 |
| Starlette + httpx (uvicorn) | aiter_raw → StreamingResponse (copy) | 472 | 2.270 | 8.11 |
| HAProxy, splice-response | splice (kernel pipes) | 1759 | 0.460 (0.410-0.540) | 1.64 |
"""
FILE = "uvicorn and Starlette: 1. 1024 MiB file, Starlette FileResponse(path), the same app code"
WRK = "uvicorn and Starlette: 3. wrk -t1 -c8 -d10s, FileResponse files (keep-alive), medians of 3 runs, 1 KiB"


def test_rows_of_cpu_tables_and_of_wrk_tables() -> None:
    rows = parse_rows(REPORT)
    assert rows[:3] == [
        Row(FILE, "raw os.sendfile", mb_s=2532, cpu_s_per_gib=0.41),
        Row(FILE, "stock uvicorn", mb_s=516, cpu_s_per_gib=1.88),
        Row(FILE, "fastbody uvicorn", mb_s=3067, cpu_s_per_gib=0.32),
    ]
    assert rows[3:5] == [Row(WRK, "stock uvicorn", req_s=1673), Row(WRK, "fastbody uvicorn", req_s=2926)]
    assert [row.server for row in rows[5:]] == [
        "fastbody WSGIReverseProxy (gunicorn gthread)",
        "Starlette + httpx (uvicorn)",
        "HAProxy, splice-response",
    ]


def test_chart_has_whole_labels_a_legend_values_and_both_panels(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from fastbody.integrations.cli.chart import draw, figure, role

    rows = parse_rows(REPORT)
    chart = figure(rows)
    chart.canvas.draw()
    texts = [text for text in chart.findobj(lambda artist: hasattr(artist, "get_text"))]
    shown = [text.get_text() for text in texts if text.get_text() and text.get_visible()]
    joined = {text.replace("\n", " ") for text in shown}
    for row in rows:  # every scenario and server name whole (wrapped at spaces, never cut)
        assert row.scenario in joined and row.server in joined
    words = {word for row in rows for word in f"{row.scenario} {row.server}".split()}
    for text in (text for text in shown if "\n" in text):  # each wrapped line made of whole words
        assert all(set(line.split()) <= words for line in text.split("\n")), text
    assert "0.320 s/GiB · 3067 MB/s" in shown and "2926" in shown  # values on the bars
    assert len(chart.axes) == 2  # CPU per GiB, and requests per second
    assert "requests per second" in chart.axes[1].get_title(loc="left")
    legend = chart.legends[0]
    assert [text.get_text().split()[0] for text in legend.get_texts()] == ["fastbody", "stock", "peer"]
    assert role("Starlette + httpx (uvicorn)") == "stock" and role("HAProxy, no splice") == "peer"
    width, height = chart.bbox.width, chart.bbox.height
    renderer = chart.canvas.get_renderer()  # type: ignore[attr-defined]  # an Agg canvas
    drawn = chart.get_tightbbox(renderer)  # in inches: all that is drawn, every label included
    assert drawn.x0 >= 0 and drawn.y0 >= 0, drawn  # nothing clipped at any edge
    assert drawn.x1 <= width / chart.dpi + 0.01 and drawn.y1 <= height / chart.dpi + 0.01, drawn
    for axes in chart.axes:  # the headings and values inside their panel (they would overlap the next)
        for text in axes.texts:
            assert axes.bbox.x0 <= text.get_window_extent(renderer).x0, text.get_text()
            assert text.get_window_extent(renderer).x1 <= axes.bbox.x1, text.get_text()
    draw(rows, tmp_path / "results.png")
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_chart_without_rows_still_writes_a_file(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from fastbody.integrations.cli.chart import draw

    draw([], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 1000


# Progress

STDERR = ["steps: 3", "[1/1] file stock: 0.4 s/GiB", "a warning", "[1/1] file fastbody: 0.3 s/GiB", "[1/1] x"]


def test_progress_in_a_log_is_one_plain_line_per_step() -> None:
    log = io.StringIO()  # not a terminal
    progress = Progress("1/3 gunicorn workers", log)
    for line in STDERR:
        progress.line(line)
    progress.close("done")
    written = log.getvalue()
    assert "\r" not in written and "\x1b" not in written
    lines = written.splitlines()
    assert len(lines) == 5  # three steps, the warning, the end
    assert lines[0].startswith("[1/3 gunicorn workers: 1/3, ") and lines[0].endswith(
        "] [1/1] file stock: 0.4 s/GiB"
    )
    assert lines[1].endswith("] a warning")
    assert "3/3" in lines[3] and lines[4].endswith("] done")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_tqdm_bar() -> None:
    pytest.importorskip("tqdm")
    screen = Terminal()
    progress = Progress("2/3 uvicorn", screen)
    for line in STDERR:
        progress.line(line)
    progress.close("done")
    written = screen.getvalue()
    assert "\r" in written  # redrawn in place
    assert "3/3" in written and "a warning\n" in written
    assert "2/3 uvicorn" in written and "done" in written


def test_bench_in_a_log_writes_no_carriage_return(tmp_path: Path) -> None:
    """The real command, stderr to a file: each finished step one line, as the log shows it."""
    pytest.importorskip("matplotlib")
    if not (REPO / "benchmarks" / "uvicorn.py").exists():
        pytest.skip("needs benchmarks/")
    log = tmp_path / "bench.log"
    with open(log, "w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "fastbody", "bench", "--tiny", "--out", str(tmp_path / "out")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            timeout=600,
        )
    written = log.read_text()
    assert done.returncode == 0, written[-3000:]
    assert "\r" not in written
    steps = [line for line in written.splitlines() if "] [" in line]
    assert len(steps) >= 30  # every benchmark's every step, one line each
    assert written.count("] done") == len(SUITE)


# The soak


def test_soak_for_15_seconds_passes() -> None:
    """benchmarks/soak.py, briefly: every server started and soaked, the table, and PASS."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--seconds", "15"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    head = "| server | requests | correct | wrong | aborted | errors | fds start/max/end |"
    assert any(line.startswith(head) for line in lines), done.stdout
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and not line.startswith(head)]
    assert [row[0] for row in rows] == [
        "| gunicorn sync",
        "| gunicorn gthread",
        "| uvicorn H11Protocol",
        "| uvicorn HttpToolsProtocol",
        "| ReverseProxy (uvicorn)",
        "| fastbody serve",
    ]
    assert all(int(row[2]) > 0 and row[3] == "0" and row[5] == "0" for row in rows), done.stdout
    assert lines[-1] == "soak: PASS"
    assert "\r" not in done.stderr  # not a terminal: plain progress lines, no tqdm bar
