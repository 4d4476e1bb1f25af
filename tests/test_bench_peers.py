"""The peer benchmarks of issue 14 (``benchmarks/static.py``, ``benchmarks/fairness.py``), run
briefly (``--tiny``): their tables, the rows the report draws from them, their target lines, and
no server left running. No figure is asserted: they are measurements, not tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastbody.integrations.cli.report import Row, parse_rows, section

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


def run_tiny(script: str) -> subprocess.CompletedProcess[str]:
    if not (BENCHMARKS / script).exists():
        pytest.skip("needs benchmarks/")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--tiny", "--repeat", "1"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def left_running(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (a benchmark's temporary directory)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in command:
            found.append(command)
    return found


def test_static_tiny_prints_both_tables_and_the_targets() -> None:
    done = run_tiny("static.py")
    out = done.stdout
    rows = parse_rows(section("static files and peers", "static.py", out))
    servers = {row.server for row in rows}
    assert "fastbody serve" in servers and "raw os.sendfile loop (floor)" in servers
    big = [row for row in rows if row.cpu_s_per_gib is not None]
    assert {row.server for row in big} == servers  # every server running has a CPU row
    for size in ("1 KiB", "16 KiB", "1 MiB"):
        assert any(row.scenario.endswith(size) and row.req_s for row in rows), size
    assert "Targets (issue 14):" in out
    for words in ("1 KiB: fastbody serve req/s ÷ granian", "1 MiB: fastbody serve req/s ÷ granian",
                  "fastbody serve CPU/GiB ÷ raw os.sendfile loop (floor)", "CPU/GiB ÷ nginx"):  # fmt: skip
        assert words in out, words
    skipped = out.split("Skipped:")[1] if "Skipped:" in out else ""
    for peer in ("granian + Starlette StaticFiles", "nginx, sendfile on"):
        assert peer in servers or peer.split()[0] in skipped, peer  # measured, or skipped with a note
    steps = [line for line in done.stderr.splitlines() if line.startswith("[1/1] ")]
    assert done.stderr.startswith(f"steps: {len(steps)}\n")
    assert not left_running("fastbody-static-bench-")


def test_fairness_tiny_checks_every_download_and_prints_the_targets() -> None:
    done = run_tiny("fairness.py")
    out = done.stdout
    rows = parse_rows(section("fairness under 200 downloads", "fairness.py", out))
    assert [row.server for row in rows] == [
        "fastbody h11/asyncio",
        "fastbody httptools/uvloop",
        "stock uvicorn httptools/uvloop",
    ]
    assert all(row.p99_ms is not None and row.cpu_s_per_gib is not None for row in rows)
    table = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "(" in line]
    assert [row[6] for row in table[1:]] == ["30 (0)"] * 3  # the same number of probes, none failed
    downloads = [row[2] for row in table[1:]]  # "ok (failed)": each of the 20 loops got one whole at least
    assert all(cell.endswith(" (0)") and int(cell.split()[0]) >= 20 for cell in downloads), downloads
    assert out.count("sha256 right in 1 of 1 rounds — held") == 3
    assert out.count("(expected ≤ 10 ms)") == 2 and out.count("probe p99 ÷ stock's p99") == 2
    assert not left_running("fastbody-fairness-bench-")


FAIRNESS = """## fairness under 200 downloads (`benchmarks/fairness.py`)

### 200 concurrent 16 MiB downloads, one uvicorn worker: probe latency

| server | app | downloads ok (failed) | window s | MB/s, all downloads | server CPU s/GiB | probes (failed) | probe p50 ms | probe p99 ms | probe max ms |
|---|---|---|---|---|---|---|---|---|---|
| fastbody httptools/uvloop | fastbody StaticFiles | 200 (0) | 0.57 | 352 | 0.870 | 300 (0) | 0.6 | 11.4 | 13.7 |
| stock uvicorn httptools/uvloop | Starlette StaticFiles | 200 (0) | 11.98 | 262 | 2.223 | 300 (0) | 1.0 | 315.1 | 770.0 |
"""  # noqa: E501  (a table as the benchmark prints it)


def test_fairness_rows_carry_the_probe_p99_and_the_chart_draws_their_panel() -> None:
    rows = parse_rows(FAIRNESS)
    scenario = (
        "fairness under 200 downloads: 200 concurrent 16 MiB downloads, one uvicorn worker: probe latency"
    )
    assert rows == [
        Row(scenario, "fastbody httptools/uvloop", 352, 0.87, None, 11.4),
        Row(scenario, "stock uvicorn httptools/uvloop", 262, 2.223, None, 315.1),
    ]
    pytest.importorskip("matplotlib")
    from fastbody.integrations.cli.chart import figure

    chart = figure(rows)
    assert [axes.get_title(loc="left").split()[0] for axes in chart.axes] == ["server", "probe"]
