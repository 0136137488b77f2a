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


def plot_docker_start(report, out):
    modes = ["bridge", "pcpm"]
    sizes = sorted({c["n"] for c in report["cells"]})
    cell = {(c["mode"], c["n"]): c for c in report["cells"]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))

    ax = axes[0]
    for mode in modes:
        med = [cell[(mode, n)]["total"]["p50_s"] for n in sizes]
        lo = [cell[(mode, n)]["total"]["p50_s"] - min(cell[(mode, n)]["total"]["p50_s"], cell[(mode, n)]["total"]["max_s"]) for n in sizes]
        hi = [cell[(mode, n)]["total"]["max_s"] - m for n, m in zip(sizes, med)]
        ax.errorbar(sizes, med, yerr=[lo, hi], marker="o", capsize=3, label=mode)
    ax.set_xlabel("concurrent cold starts N")
    ax.set_ylabel("total time (s, median of rounds; whisker = max)")
    ax.set_title(f"all N done (pcpm/bridge at N={sizes[-1]}: {report['ratio_at_max_n']:.2f})")
    ax.grid(alpha=0.3)
    ax.legend()

    ax = axes[1]
    width = 0.2
    for k, mode in enumerate(modes):
        for j, (metric, hatch) in enumerate([("ready", None), ("each", "//")]):
            p50 = [cell[(mode, n)][metric]["p50_s"] for n in sizes]
            p99 = [cell[(mode, n)][metric]["p99_s"] - v for n, v in zip(sizes, p50)]
            xs = [i + (2 * k + j - 1.5) * width for i in range(len(sizes))]
            ax.bar(xs, p50, width, yerr=[[0] * len(p50), p99], capsize=2, hatch=hatch,
                   color=f"C{k}", alpha=0.85 if j == 0 else 0.45,
                   label=f"{mode}: {'create→HTTP' if metric == 'ready' else 'create→removed'}")
    ax.set_xticks(range(len(sizes)), [f"N={n}" for n in sizes])
    ax.set_ylabel("per cold start (s, p50; whisker = p99)")
    ax.set_title("each cold start")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)

    ax = axes[2]
    mem = report["memory"]
    parts = [
        ("pause processes (PSS)", mem["pause_processes"]["pss_kib"]),
        ("containerd shims (PSS)", mem["shims"]["pss_kib"]),
        ("kernel, unreclaimable growth", max(mem["kernel"]["unreclaimable_kib"], 0)),
    ]
    bottom = 0
    for k, (label, kib) in enumerate(parts):
        ax.bar([0], [kib / 1024], 0.5, bottom=bottom / 1024, label=f"{label}: {kib / 1024:.1f} MiB",
               color=f"C{k + 2}")
        bottom += kib
    ax.bar([1], [mem["paper_kib_for_50"] / 1024], 0.5, color="grey",
           label=f"paper: {mem['paper_kib_for_50'] / 1024:.0f} MiB")
    ax.bar([2], [mem["cgroup_charge_kib"] / 1024], 0.5, color="C6",
           label=f"cgroup charge: {mem['cgroup_charge_kib'] / 1024:.1f} MiB")
    ax.set_xticks([0, 1, 2], ["measured", "paper", "cgroups"])
    ax.set_ylabel("MiB")
    ax.set_title(f"{mem['containers']} idle pause containers")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)

    m = report["machine"]
    fig.suptitle(
        f"bench docker-start: {m['cores']} cores, {m['cpu_model']}, kernel {m['kernel']}, "
        f"Docker {report['docker_version']}, {report['rounds']} rounds, image {report['image']}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out, dpi=120)


def cpu_bars(ax, cells, labels, key):
    """Stacked bars of each cell's CPU account `key` by component; returns each bar's total."""
    comps = sorted({k for c in cells for k in c[key]["ms"]})
    bottom = [0.0] * len(cells)
    for j, comp in enumerate(comps):
        vals = [c[key]["ms"].get(comp, 0.0) for c in cells]
        ax.bar(labels, vals, bottom=bottom, color=f"C{j % 10}", label=comp)
        bottom = [b + v for b, v in zip(bottom, vals)]
    return bottom


def plot_coldstart(report, out):
    order = ["bridge", "pcpm", "netns", "netns-runc", "netns-crun", "vm", "unikernel"]
    modes = sorted({c["mode"] for c in report["cells"]}, key=lambda m: order.index(m) if m in order else 9)
    sizes = sorted({c["n"] for c in report["cells"]})
    cell = {(c["mode"], c["n"]): c for c in report["cells"]}
    timelines = report.get("timelines", {})
    accounted = [c for c in report["cells"] if c.get("cpu_ms_per_cold_start")]
    panels = 1 + (1 if accounted else 0) + len(timelines)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.6))
    if not hasattr(axes, "__len__"):
        axes = [axes]
    ax = axes[0]
    for mode in modes:
        # A column may stop below the largest N (vm: N <= 50).
        ns = [n for n in sizes if (mode, n) in cell]
        med = [cell[(mode, n)]["total"]["p50_s"] for n in ns]
        hi = [cell[(mode, n)]["total"]["max_s"] - m for n, m in zip(ns, med)]
        color = {"bridge": "C0", "pcpm": "C2", "netns": "C3", "netns-runc": "C3", "netns-crun": "C1", "vm": "C5", "unikernel": "C4"}.get(mode, "C6")
        ax.errorbar(ns, med, yerr=[[0] * len(med), hi], marker="o", capsize=3, color=color,
                    label=f"{mode} total")
        done = [n for n in ns if cell[(mode, n)]["each"]]
        p99 = [cell[(mode, n)]["each"]["p99_s"] for n in done]
        ax.plot(done, p99, linestyle=":", marker=".", color=color, label=f"{mode} p99 of each")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent cold-start activations N")
    ax.set_ylabel("seconds (total: median of rounds, whisker = max)")
    ratios = ", ".join(f"{m} {r:.2f}" for m, r in report["ratios_at_max_n"].items() if m != "bridge")
    ax.set_title(f"Fig 6 through Kafka (vs bridge at N={sizes[-1]}: {ratios})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    rest = axes[1:]
    if accounted:
        # CPU ms per cold start by component (a cgroup each), every mode at each N it ran.
        ax, rest = rest[0], rest[1:]
        picked = sorted(accounted, key=lambda c: (modes.index(c["mode"]), c["n"]))
        labels = [f"{c['mode']}\nN={c['n']}" for c in picked]
        bottom = cpu_bars(ax, picked, labels, "cpu_ms_per_cold_start")
        # The Linux guest under TCG costs seconds per cold start: its bars are cut at the
        # others' scale and carry their total.
        rest_max = max([b for c, b in zip(picked, bottom) if c["mode"] != "vm"] or bottom)
        top = rest_max * 1.15
        ax.set_ylim(0, top)
        for i, b in enumerate(bottom):
            if b > top:
                ax.text(i, top * 0.97, f"{b:.0f}", ha="center", va="top", fontsize=6, rotation=90)
        ax.set_ylabel("CPU ms per cold start (mean of rounds)")
        ax.set_title("where the CPU goes (cgroup per component)", fontsize=9)
        ax.tick_params(axis="x", labelsize=6, rotation=90)
        ax.legend(fontsize=6)
    for ax, mode in zip(rest, [m for m in modes if m in timelines]):
        spans = sorted(timelines[mode], key=lambda s: s["produced"])
        for i, s in enumerate(spans):
            ax.barh(i, s["init_start"] - s["produced"], left=s["produced"], color="C7", height=0.8)
            ax.barh(i, s["run_start"] - s["init_start"], left=s["init_start"], color="C1", height=0.8)
            ax.barh(i, s["end"] - s["run_start"], left=s["run_start"], color="C2", height=0.8)
        ax.set_title(f"{mode}: N={len(spans)} timeline", fontsize=9)
        ax.set_xlabel("seconds since the first produce")
        ax.set_ylabel("activation")
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in ["C7", "C1", "C2"]],
                  labels=["queue + container start", "init", "run"], fontsize=7, loc="lower right")
    m = report["machine"]
    fig.suptitle(f"bench coldstart: {m['cores']} cores, {m['cpu_model']}, kernel {m['kernel']}, {report['rounds']} rounds", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(out, dpi=120)


def plot_memory(report, out):
    rows = report["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    names = [f"{r['scenario']}\n×{r['objects']}" for r in rows]
    pss = [r["processes"]["pss_kib"] / 1024 for r in rows]
    kern = [max(r["kernel"]["unreclaimable_kib"], 0) / 1024 for r in rows]
    ax.bar(names, pss, label="processes (PSS)", color="C0")
    ax.bar(names, kern, bottom=pss, label="kernel, unreclaimable growth", color="C3")
    for i, r in enumerate(rows):
        ax.text(i, pss[i] + kern[i], f"{r['committed_kib'] / 1024:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("MiB committed for the idle objects")
    ax.set_title(f"memory of the idle objects (Table 2; ×count)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1]
    timed = [r for r in rows if r["total_s"] is not None]
    ax.bar([f"{r['scenario']}\n×{max(r['objects'], report['n'] if r['scenario'] == 'cold' else 0)}" for r in timed], [r["total_s"] for r in timed], color="C2")
    ax.set_ylabel("seconds for that many concurrent functions")
    ax.set_title("time from that state (container level)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    m = report["machine"]
    fig.suptitle(f"bench memory: {m['cores']} cores, {m['cpu_model']}, kernel {m['kernel']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(out, dpi=120)


def plot_stress(report, out):
    modes = [m for m in ["cold", "warm"] if any(c["mode"] == m for c in report["cells"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        cells = sorted((c for c in report["cells"] if c["mode"] == mode), key=lambda c: c["n"])
        xs = range(len(cells))
        width = 0.27
        for k, (key, label) in enumerate([("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")]):
            ax.bar([x + (k - 1) * width for x in xs], [c["each"][key] for c in cells], width, label=label)
        ax.set_xticks(list(xs), [f"N={c['n']}" + (f"\n{c['errors']} errors" if c["errors"] else "") for c in cells])
        ax.set_ylabel("client-side time per invoke (ms)")
        ax.set_title(f"{mode}: N concurrent blocking invokes", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(
        f"bench/stress through the REST API (invoker network mode {report.get('network_mode')}): "
        f"{m['cores']} cores, {m['cpu_model']}, kernel {m['kernel']}, {report['rounds']} rounds",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(out, dpi=120)


def plot_warm(report, out):
    cells = report["cells"]
    modes = sorted({c["mode"] for c in cells})
    fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.6))
    for i, mode in enumerate(modes):
        for blocking, style in [(True, "-"), (False, "--")]:
            cs = sorted((c for c in cells if c["mode"] == mode and c["blocking"] == blocking),
                        key=lambda c: c["concurrency"])
            label = f"{mode} {'blocking' if blocking else 'non-blocking'}"
            xs = [c["concurrency"] for c in cs]
            ax.plot(xs, [c["activations_per_second"] for c in cs], style, marker="o", color=f"C{i}", label=label)
            ax2.plot(xs, [c["latency"]["p50_s"] * 1e3 for c in cs], style, marker="o", color=f"C{i}", label=f"{label} p50")
            ax2.plot(xs, [c["latency"]["p99_s"] * 1e3 for c in cs], style, marker=".", color=f"C{i}", alpha=0.5, label=f"{label} p99")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("closed-loop clients C")
    ax.set_ylabel("warm activations / s")
    ax.set_title("throughput through Kafka", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("closed-loop clients C")
    ax2.set_ylabel("produce -> ack, ms")
    ax2.set_title("latency", fontsize=9)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=6)
    # CPU per activation by component, blocking cells at the highest C of each mode.
    top = max(c["concurrency"] for c in cells)
    picked = [c for c in cells if c["concurrency"] == top and c.get("cpu_ms_per_activation")]
    labels = [f"{c['mode']}\n{'blocking' if c['blocking'] else 'non-bl.'}" for c in picked]
    totals = cpu_bars(ax3, picked, labels, "cpu_ms_per_activation")
    # Head room above the tallest bar for the legend, so it covers no bar.
    ax3.set_ylim(0, max(totals, default=1.0) * 1.45)
    ax3.set_ylabel("CPU ms per warm activation")
    ax3.set_title(f"where the CPU goes at C={top} (cgroup per component)", fontsize=9)
    ax3.legend(fontsize=6, ncol=4, loc="upper center")
    m = report["machine"]
    fig.suptitle(f"bench warm: {m['cores']} cores, {m['cpu_model']}, {report['seconds_per_cell']} s per cell", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(out, dpi=120)


def plot_soak(report, out):
    """One column of panels per count, one line per mode, against activations answered."""
    groups = [
        ("kernel objects", ["netns", "links", "mounts", "cgroups"]),
        ("containers and VMs", ["docker_containers", "runc_containers", "qemu_processes"]),
        ("invoker fds and threads", ["invoker_fds", "invoker_threads"]),
        ("invoker RSS (MiB)", ["invoker_rss_mib"]),
    ]
    modes = report["modes"]
    fig, axes = plt.subplots(len(modes), len(groups), figsize=(4.2 * len(groups), 2.6 * len(modes)),
                             squeeze=False)
    for r, mode in enumerate(modes):
        xs = [s["activations"] for s in mode["samples"]]
        for c, (title, keys) in enumerate(groups):
            ax = axes[r][c]
            for j, key in enumerate(keys):
                ax.plot(xs, [s["counts"][key] for s in mode["samples"]], color=f"C{j}", label=key)
            ax.set_title(f"{mode['mode']}: {title}", fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if r == len(modes) - 1:
                ax.set_xlabel("activations answered", fontsize=8)
            if r == 0:
                ax.legend(fontsize=6)
        axes[r][0].set_ylabel(
            f"{mode['activations']} act., {mode['cold_starts_sent']} cold,\n{mode['failures']} failed",
            fontsize=7)
    m = report["machine"]
    fig.suptitle(f"bench soak: {m['cores']} cores, {m['cpu_model']}, commit {m['git_commit'][:10]}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=110)


def main():
    path = Path(sys.argv[1])
    report = json.loads(path.read_text())
    out = path.with_suffix(".png")
    if "single_lease" in report:
        plot_netns(report, out)
    elif "rows" in report and "method" in report:
        plot_memory(report, out)
    elif "ratios_at_max_n" in report:
        plot_coldstart(report, out)
    elif "ratio_at_max_n" in report:
        plot_docker_start(report, out)
    elif "seconds_per_cell" in report:
        plot_warm(report, out)
    elif report.get("kind") == "soak":
        plot_soak(report, out)
    elif report.get("kind") == "stress":
        plot_stress(report, out)
    else:
        sys.exit(f"{path}: unknown result shape")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
