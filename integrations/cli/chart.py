"""``results.png``: the report's rows with a throughput and a CPU s/GiB column as bars, one group
per scenario, stock and fastbody (and peers) side by side."""

from __future__ import annotations

from pathlib import Path

from .report import Row


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
