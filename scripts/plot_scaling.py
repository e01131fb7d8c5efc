#!/usr/bin/python3
"""Plots of a kvtier-scaling sweep, from its JSON (kvtier-scaling --json_out).

Usage: plot_scaling.py SWEEP.json OUT.png
Writes OUT.png (output tokens/s against batch size, a panel per context, a line per system),
OUT_pareto.png (time per output token against tokens/s: the throughput-latency frontier) and
OUT_phases.png (each system's decode step at its largest batch, split into the timed phases:
plan, select, resolve, load, attend; the rest of the step is 'other').
Needs matplotlib (Debian: python3-matplotlib, under /usr/bin/python3).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASES = ("plan_ms", "select_ms", "resolve_ms", "load_ms", "attend_ms")


def sibling(png, suffix):
    root, ext = os.path.splitext(png)
    return f"{root}_{suffix}{ext or '.png'}"


def by_context(points):
    contexts = sorted({p["context"] for p in points})
    return contexts, {c: [p for p in points if p["context"] == c] for c in contexts}


def systems_of(points):
    seen = []
    for p in points:
        if p["system"] not in seen:
            seen.append(p["system"])
    return seen


def panels(count):
    fig, axes = plt.subplots(1, max(count, 1), figsize=(5.5 * max(count, 1), 4.2), squeeze=False)
    return fig, axes[0]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        sweep = json.load(f)
    png = sys.argv[2]
    points = sweep["points"]
    limits = {(l["context"], l["system"]): l for l in sweep.get("limits", [])}
    contexts, groups = by_context(points)
    title = f"{sweep.get('device', '')}"

    fig, axes = panels(len(contexts))
    for ax, context in zip(axes, contexts):
        for system in systems_of(groups[context]):
            rows = [p for p in groups[context] if p["system"] == system]
            label = system
            limit = limits.get((context, system))
            if limit and limit["reason"]:
                label += f" (limit {limit['largest_batch']})"
            ax.plot([p["batch"] for p in rows], [p["tokens_per_second"] or 0 for p in rows],
                    marker="o", label=label)
        ax.set_title(f"context {context}")
        ax.set_xlabel("batch size")
        ax.set_ylabel("output tokens/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"tokens/s against batch {title}")
    fig.tight_layout()
    fig.savefig(png, dpi=120)

    fig, axes = panels(len(contexts))
    for ax, context in zip(axes, contexts):
        for system in systems_of(groups[context]):
            rows = [p for p in groups[context] if p["system"] == system]
            ax.plot([p["tokens_per_second"] or 0 for p in rows],
                    [p["mean_step_ms"] or 0 for p in rows], marker="o", label=system)
            for p in rows:
                ax.annotate(str(p["batch"]), (p["tokens_per_second"] or 0, p["mean_step_ms"] or 0),
                            fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_title(f"context {context}")
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel("time per output token (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"latency against throughput {title}")
    fig.tight_layout()
    fig.savefig(sibling(png, "pareto"), dpi=120)

    fig, axes = panels(len(contexts))
    for ax, context in zip(axes, contexts):
        systems = systems_of(groups[context])
        largest = [max((p for p in groups[context] if p["system"] == s), key=lambda p: p["batch"])
                   for s in systems]
        bottom = [0.0] * len(largest)
        for phase in PHASES:
            values = [p[phase] or 0 for p in largest]
            ax.bar(range(len(largest)), values, bottom=bottom, label=phase.replace("_ms", ""))
            bottom = [b + v for b, v in zip(bottom, values)]
        other = [max((p["mean_step_ms"] or 0) - b, 0) for p, b in zip(largest, bottom)]
        ax.bar(range(len(largest)), other, bottom=bottom, label="other")
        ax.set_xticks(range(len(largest)))
        ax.set_xticklabels([f"{p['system']}\nbatch {p['batch']}" for p in largest], fontsize=7)
        ax.set_title(f"context {context}")
        ax.set_ylabel("ms per decode step")
        ax.legend(fontsize=7)
    fig.suptitle(f"the decode step by phase {title}")
    fig.tight_layout()
    fig.savefig(sibling(png, "phases"), dpi=120)


if __name__ == "__main__":
    main()
