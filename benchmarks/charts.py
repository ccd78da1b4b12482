"""Charts of the benchmarks' figures beside their raw limits, drawn from the results files
the benchmarks leave in ``benchmarks/results/`` (the docs site draws them when it is
built; ``python -m benchmarks.charts DIR`` writes them to DIR).

Each figure is drawn next to the limit measured in the same run: what the machine's
broker, DuckDB or vector engine does alone. The bars of one pair share the run's noise.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["draw"]

# (results file, figure, label): throughput, higher is better.
THROUGHPUT = (
    ("publish", "throughput", "publish (SDK vs raw nats-py)"),
    ("ingest-history", "throughput", "history projection (vs a raw pull into DuckDB)"),
    ("replay-history", "throughput", "rebuild by replay (vs a raw pull into DuckDB)"),
    ("ingest-vectors", "throughput", "vector projection (vs raw Qdrant Edge upserts)"),
)
# Latency, lower is better: (results file, figure, label, what the raw limit is).
LATENCY = (
    ("search", "p50", "search p50", "engine query, in-process"),
    ("search", "p99", "search p99", "engine query, in-process"),
    ("search_load", "1000 events/s p50", "search p50, 1,000 events/s arriving", "NATS echo"),
    ("search_load", "1000 events/s p99", "search p99, 1,000 events/s arriving", "NATS echo"),
)


def _load(results: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


Pair = tuple[str, float, float, str, str, float]  # label, value, raw, unit, raw's name, ratio


def _pairs(found: dict[str, dict[str, Any]], wanted: tuple[tuple[str, ...], ...]) -> list[Pair]:
    pairs = []
    for file, figure, label, *raw_label in wanted:
        entry = found.get(file, {}).get(figure)
        if entry is None or entry["raw"] is None:
            continue
        what = raw_label[0] if raw_label else "raw"
        ratio = entry.get("ratio") or entry["value"] / entry["raw"]
        pairs.append((label, entry["value"], entry["raw"], entry["unit"], what, ratio))
    return pairs


def _chart(pairs: list[Pair], title: str, lower: bool) -> bytes:
    """One panel per figure, each on its own scale: the raw limit above, memstream below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "memstream"  # the same figures draw the same file
    rows = max(len(pairs), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(8, 0.5 + 1.1 * rows), squeeze=False)
    if not pairs:
        axes[0][0].text(0.5, 0.5, "no results yet: run make bench", ha="center", va="center")
        axes[0][0].set_axis_off()
    better = "lower is better" if lower else "higher is better"
    for (ax,), (label, value, raw, unit, what, ratio) in zip(axes, pairs, strict=False):
        ax.barh([1, 0], [raw, value], color=["#b0b7c3", "#3b6fb6"], height=0.8)
        ax.set_yticks([1, 0], [what, "memstream"], fontsize=8)
        ax.set_xlim(0, max(value, raw) * 1.45)
        for y, v in ((1, raw), (0, value)):
            ax.text(v, y, f" {v:,.1f} {unit}", va="center", fontsize=8)
        ax.set_title(f"{label}: {ratio:.2f}x ({better})", fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    return out.getvalue().encode()


def draw(results: Path) -> dict[str, bytes]:
    """The charts as SVG files, by name."""
    found = _load(results)
    return {
        "throughput.svg": _chart(
            _pairs(found, THROUGHPUT), "Throughput beside the raw limit (same run)", lower=False
        ),
        "latency.svg": _chart(
            _pairs(found, LATENCY), "Search latency beside its limit (same run)", lower=True
        ),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.charts")
    parser.add_argument("dir", nargs="?", default="charts", help="where to write the SVGs")
    parser.add_argument("--smoke", action="store_true", help="draw them, write nothing")
    args = parser.parse_args(argv)
    charts = draw(Path(__file__).parent / "results")
    if args.smoke:
        print(f"charts: drew {', '.join(sorted(charts))} (not written: --smoke)")
        return 0
    target = Path(args.dir)
    target.mkdir(parents=True, exist_ok=True)
    for name, svg in charts.items():
        (target / name).write_bytes(svg)
        print(target / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
