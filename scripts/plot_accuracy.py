#!/usr/bin/env python3
"""Plots a kvtier-accuracy sweep: output error against budget fraction, one line per index
kind and input.

Usage: plot_accuracy.py SWEEP.csv OUT.png

Reads the CSV that `kvtier-accuracy --sweep=...` writes (columns dump, index,
budget_fraction, mean_output_error, p95_output_error, error, ...); runs that failed (a
non-empty `error`) or have no error figure are left out. Needs matplotlib (Debian:
python3-matplotlib). Exits 1 with a message when it cannot plot.
"""

import csv
import os
import sys


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    csv_path, png_path = argv[1], argv[2]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError as e:
        print(f"plot_accuracy.py: matplotlib is not available to {sys.executable}: {e}",
              file=sys.stderr)
        return 1

    lines = {}  # (index, input) -> [(fraction, mean error, p95 error)]
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("error"):
                continue
            try:
                x = float(row["budget_fraction"])
                mean = float(row["mean_output_error"])
                p95 = float(row["p95_output_error"])
            except (KeyError, ValueError):
                continue
            name = os.path.splitext(os.path.basename(row["dump"]))[0]
            lines.setdefault((row["index"], name), []).append((x, mean, p95))
    if not lines:
        print(f"plot_accuracy.py: {csv_path} has no successful run to plot", file=sys.stderr)
        return 1

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    styles = {"page_bounds": "-", "wave": "--"}
    for (index, name), points in sorted(lines.items()):
        points.sort()
        xs = [100 * p[0] for p in points]
        ax.plot(xs, [100 * p[1] for p in points], styles.get(index, ":"), marker="o",
                label=f"{name} ({index})")
    ax.set_xscale("log")
    ticks = sorted({100 * p[0] for points in lines.values() for p in points})
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("retrieval budget (% of the cold tokens)")
    ax.set_ylabel("output error, mean over query heads (%)")
    ax.set_title("kvtier-accuracy: output error against budget")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
