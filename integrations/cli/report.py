"""``results.md``: the benchmarks' Markdown as printed, one section each under a line about this
machine, and the rows of its tables that the chart draws."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


def section(title: str, script: str, output: str) -> str:
    """One benchmark's part of the report: its title and script, then its output."""
    return f"## {title} (`benchmarks/{script}`)\n\n{output.strip()}\n"


def document(sections: list[str]) -> str:
    """The whole of ``results.md``."""
    return "# fastbody bench\n\n" + _machine() + "\n".join(sections)


def _machine() -> str:
    import platform

    return f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.\n\n"


# The rows to draw


@dataclass(frozen=True)
class Row:
    """One server's figures in one scenario, as its table printed them (None: not in that table)."""

    scenario: str
    server: str
    mb_s: float | None = None
    cpu_s_per_gib: float | None = None
    req_s: float | None = None
    p99_ms: float | None = None  # a probe's p99 latency beside big downloads (the fairness tables)


def parse_rows(markdown: str) -> list[Row]:
    """Rows of every table that has a server (or proxy) column and either an MB/s and a CPU s/GiB
    column or a requests/s column, or a probe p99 column (with or without the first two). A table
    with a body column (the wrk ones) is one scenario per body size."""
    rows: list[Row] = []
    benchmark = scenario = ""
    header: list[str] | None = None
    for line in markdown.splitlines():
        if line.startswith("## "):  # one benchmark's output: its scenarios may repeat another's titles
            benchmark, header = line[3:].split(" (`")[0].strip(), None
        elif line.startswith("#"):
            title = line.lstrip("# ").strip()
            scenario, header = f"{benchmark}: {title}" if benchmark else title, None
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

    def number(index: int | None) -> float | None:
        found = re.match(r"[\d.]+", cells[index]) if index is not None else None
        return float(found[0]) if found else None

    server = column("server")
    server = column("proxy") if server is None else server
    if server is None or len(cells) != len(header):
        return None
    mb_s, cpu, req_s = number(column("mb/s")), number(column("s/gib")), number(column("requests/s"))
    p99 = number(column("p99"))
    body = header.index("body") if "body" in header else None  # not "body path"
    if body is not None:  # a wrk table: one scenario per body size
        scenario = f"{scenario}, {cells[body]}"
    if req_s is not None:
        return Row(scenario, cells[server], req_s=req_s)
    if mb_s is not None and cpu is not None:
        return Row(scenario, cells[server], mb_s=mb_s, cpu_s_per_gib=cpu, p99_ms=p99)
    if p99 is not None:
        return Row(scenario, cells[server], p99_ms=p99)
    return None
