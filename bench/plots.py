"""PNG plots of end-to-end results (bench/e2e.py JSON) for docs/.

    pip install matplotlib==3.11.2   # not a dependency of the service or its tests
    python bench/plots.py bench/results/e2e-h100-2026-11-25-selfie-delay0.json --out-dir docs

Writes ``<stem>-throughput.png`` (frames/s against concurrency, one line per transport and
batch) and ``<stem>-latency.png`` (p50/p90/p99 per request at each transport's batch-1 runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_throughput(report: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[str, int, str], list[tuple[int, float]]] = {}
    for row in report["served"]:
        key = (row["transport"], row["batch"], row["size"])
        series.setdefault(key, []).append((row["concurrency"], row["frames_per_s"]))
    for (transport, batch, _size), points in sorted(series.items()):
        points.sort()
        ax.plot(*zip(*points, strict=True), marker="o", label=f"{transport}, batch {batch}")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("frames/s")
    ax.set_yscale("log")
    sizes = sorted({k[2] for k in series})
    ax.set_title(f"{report['model']} {', '.join(sizes)} on {report.get('gpu') or report['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(report: dict, path: Path) -> None:
    rows = [r for r in report["served"] if r["batch"] == 1 and r["concurrency"] == 1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.25
    for i, q in enumerate(("p50", "p90", "p99")):
        xs = [j + (i - 1) * width for j in range(len(rows))]
        ax.bar(xs, [r[f"latency_ms_{q}"] for r in rows], width, label=q)
    ax.set_xticks(range(len(rows)), [f"{r['transport']}\n{r['size']}" for r in rows], fontsize=8)
    ax.set_ylabel("ms per request (batch 1, one client)")
    ax.set_yscale("log")
    ax.set_title(f"{report['model']}: latency per transport")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--out-dir", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.reports:
        report = json.loads(path.read_text())
        plot_throughput(report, args.out_dir / f"{path.stem}-throughput.png")
        if any(r["batch"] == 1 and r["concurrency"] == 1 for r in report["served"]):
            plot_latency(report, args.out_dir / f"{path.stem}-latency.png")
        print(f"{path} -> {args.out_dir}")


if __name__ == "__main__":
    main()
