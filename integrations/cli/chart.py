"""``results.png``: the report's rows as bars, one group per scenario, stock, fastbody and peers
side by side in it, each bar's value written on it. Up to three panels: server CPU seconds per
GiB (the big bodies, their MB/s beside the value), requests per second (the wrk runs), and a
small request's p99 latency beside many big downloads (the fairness runs)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .report import Row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROLES = {  # role: (colour, legend entry)
    "fastbody": ("#1f77b4", "fastbody"),
    "stock": ("#ff7f0e", "stock server (what fastbody replaces)"),
    "peer": ("#8c8c8c", "peer or floor (nginx, HAProxy, Go, raw syscalls)"),
}
SCENARIO_WIDTH = 64  # characters per line of a group's heading (wrapped at spaces, never cut)
SERVER_WIDTH = 26  # characters per line of a bar's label
HEADING_LINE = 0.6  # height of a heading line, in bars
GAP = 0.7  # space between groups, in bars


def role(server: str) -> str:
    """Which colour a server's bars get: fastbody's, the stock server's, or a peer's."""
    name = server.lower()
    if "fastbody" in name:
        return "fastbody"
    if "stock" in name or "starlette + httpx" in name:
        return "stock"
    return "peer"


@dataclass(frozen=True)
class Panel:
    title: str
    values: list[tuple[str, str, float, str]]  # (scenario, server, value, the text on the bar)


def panels(rows: list[Row]) -> list[Panel]:
    """What each panel draws, in the report's order; a panel with nothing to draw is left out."""
    cpu = Panel("server CPU seconds per GiB, lower is better (MB/s beside each value)", [])
    rate = Panel("requests per second (wrk -t1 -c8), higher is better", [])
    latency = Panel("probe p99 ms beside many big downloads, lower is better", [])
    for row in rows:
        if row.cpu_s_per_gib is not None:
            text = f"{row.cpu_s_per_gib:.3f} s/GiB"
            text += f" · {row.mb_s:.0f} MB/s" if row.mb_s is not None else ""
            cpu.values.append((row.scenario, row.server, row.cpu_s_per_gib, text))
        if row.req_s is not None:
            rate.values.append((row.scenario, row.server, row.req_s, f"{row.req_s:.0f}"))
        if row.p99_ms is not None:
            latency.values.append((row.scenario, row.server, row.p99_ms, f"{row.p99_ms:.1f} ms"))
    return [panel for panel in (cpu, rate, latency) if panel.values]


def wrap(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters, broken at spaces only (a longer word
    stays whole on its own line)."""
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False))


def _height(panel: Panel) -> float:
    """The panel's height in bars: its bars, each group's heading and the gaps between groups."""
    scenarios = list(dict.fromkeys(scenario for scenario, *_ in panel.values))
    headings = sum(wrap(scenario, SCENARIO_WIDTH).count("\n") + 1 for scenario in scenarios)
    return len(panel.values) + HEADING_LINE * headings + GAP * len(scenarios)


def figure(rows: list[Row]) -> Figure:
    """The chart as a matplotlib figure (``draw`` saves it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    shown = panels(rows)
    tallest = max((_height(panel) for panel in shown), default=4.0)
    chart = Figure(figsize=(8.5 * max(len(shown), 1), 1.8 + 0.24 * tallest), layout="constrained")
    FigureCanvasAgg(chart)  # drawn off screen, whatever backend pyplot would pick
    chart.suptitle("fastbody against stock servers and peers, one run on this machine", fontsize=13)
    if not shown:
        chart.text(0.5, 0.5, "no table with a server and a CPU s/GiB or requests/s column", ha="center")
        return chart
    for axes, panel in zip(chart.subplots(1, len(shown), squeeze=False)[0], shown, strict=True):
        _draw_panel(axes, panel, tallest)
    handles = [Patch(color=colour, label=label) for colour, label in ROLES.values()]
    chart.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    return chart


def _draw_panel(axes: object, panel: Panel, tallest: float) -> None:
    from matplotlib.axes import Axes

    assert isinstance(axes, Axes)
    positions: list[float] = []
    names: list[str] = []
    position, scenario = 0.0, None
    top = max(value for _, _, value, _ in panel.values)
    for this, server, _value, _ in panel.values:
        if this != scenario:  # a new group: its heading above its first bar
            scenario = this
            heading = wrap(this, SCENARIO_WIDTH)
            position += GAP if positions else 0.0
            axes.annotate(heading, (0, position - 0.4), xytext=(2, 0), textcoords="offset points",
                          fontsize=8, fontweight="bold", va="top", ha="left")  # fmt: skip
            position += HEADING_LINE * (heading.count("\n") + 1)
        positions.append(position)
        names.append(wrap(server, SERVER_WIDTH))
        position += 1
    values = [value for _, _, value, _ in panel.values]
    colours = [ROLES[role(server)][0] for _, server, _, _ in panel.values]
    bars = axes.barh(positions, values, color=colours, height=0.8)
    axes.bar_label(bars, labels=[text for *_, text in panel.values], padding=3, fontsize=7)
    axes.set_yticks(positions, names, fontsize=7)
    axes.set_ylim(tallest - 0.5, -0.5)  # top to bottom in the report's order; panels share a scale
    longest = max(len(text) for *_, text in panel.values)
    axes.set_xlim(0, top * (1.08 + 0.012 * longest))  # room for a value written beside the longest bar
    axes.set_title(panel.title, fontsize=10, loc="left")
    axes.tick_params(axis="y", length=0)
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)


def draw(rows: list[Row], path: Path) -> None:
    """Write the chart of ``rows`` to ``path`` (PNG)."""
    chart = figure(rows)
    chart.savefig(path, dpi=100)
