#!/usr/bin/env python3
"""Plots a bench result JSON as a PNG next to it: bench/plot.py bench/results/netns.json

Needs matplotlib; bench/plot.sh installs it into a venv under the tools folder.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


# The PCPM paper's Table 1 (ip commands, Linux 4.4), in ms, for reference.
PAPER_TABLE1 = {
    "create": {1: 280, 10: 1270, 50: 6280, 100: 14410},
    "cleanup": {1: 200, 10: 710, 50: 3240, 100: 7770},
}


def plot_netns(report, out):
    ways = ["ip", "rtnetlink", "netpool"]
    sizes = sorted({c["n"] for c in report["cells"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, phase in zip(axes, ["create", "cleanup"]):
        width = 0.27
        for k, way in enumerate(ways):
            cells = {c["n"]: c for c in report["cells"] if c["way"] == way}
            med = [cells[n][phase]["p50_s"] * 1e3 for n in sizes]
            hi = [cells[n][phase]["max_s"] * 1e3 - m for n, m in zip(sizes, med)]
            xs = [i + (k - 1) * width for i in range(len(sizes))]
            ax.bar(xs, med, width, yerr=[[0] * len(med), hi], capsize=2, label=way)
        paper = [(i, PAPER_TABLE1[phase].get(n)) for i, n in enumerate(sizes)]
        paper = [(i, v) for i, v in paper if v is not None]
        if paper:
            ax.plot([i for i, _ in paper], [v for _, v in paper], "k_", markersize=28,
                    markeredgewidth=2, label="paper (ip, Linux 4.4)")
        ax.set_yscale("log")
        ax.set_xticks(range(len(sizes)), [f"N={n}" for n in sizes])
        ax.set_ylabel("total time (ms, median; whisker = max)")
        ax.set_title(f"{phase} N concurrent endpoints")
        ax.grid(axis="y", which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    m = report["machine"]
    lease = report["single_lease"]
    fig.suptitle(
        f"bench netns: {m['cores']} cores, {m['cpu_model']}, kernel {m['kernel']}, "
        f"{report['runs']} runs; single lease p99 {lease['p99_s'] * 1e6:.1f} µs",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out, dpi=120)


def main():
    path = Path(sys.argv[1])
    report = json.loads(path.read_text())
    out = path.with_suffix(".png")
    if "single_lease" in report:
        plot_netns(report, out)
    else:
        sys.exit(f"{path}: unknown result shape")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
