"""The sweep's PNG plots (matplotlib, Agg backend).

``curves.png`` (learning curves, one line per setting, references dashed), ``quality.png`` (final
quality ± std against the setting, references as bands), ``cost.png`` (optimizer-state bytes and
ms/step against the setting), ``pareto.png`` (quality against memory and against time, the
non-dominated points joined).
"""

from __future__ import annotations

import math
from pathlib import Path

from .plots import _mean_curve, _save, _smooth, _state_bars
from .summary import fmt_value, metric_scale
from .sweep_summary import entry_runs, time_key

SWEEP_PLOTS = {
    "curves": "curves.png",
    "quality": "quality.png",
    "cost": "cost.png",
    "pareto": "pareto.png",
}


def _short(s: dict, name: str) -> str:
    if s["reference"]:
        return name
    return "/".join(fmt_value(v) for v in s["values"].values())


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality; sorted by
    cost."""
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (c, q) in enumerate(points):
        if not (math.isfinite(c) and math.isfinite(q)):
            continue
        dominated = any(
            (c2 <= c and sign * q2 >= sign * q) and (c2 < c or sign * q2 > sign * q)
            for j, (c2, q2) in enumerate(points)
            if j != i and math.isfinite(c2) and math.isfinite(q2)
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def write_plots(out: Path, meta: dict, results: list[dict], summary: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    scale = metric_scale(meta)
    mlabel = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    keys = [a["key"] for a in meta["grid"]]
    points = [k for k, s in summary.items() if not s["reference"]]
    refs = [k for k, s in summary.items() if s["reference"]]
    cmap = plt.get_cmap("viridis")
    color = {k: cmap(0.9 * i / max(1, len(points) - 1)) for i, k in enumerate(points)}
    ref_colors = ["#d62728", "#444444", "#ff7f0e", "#8c564b"]
    for i, k in enumerate(refs):
        color[k] = ref_colors[i % len(ref_colors)]
    title = f"{meta['task']}: {meta['optimizer']} over {' × '.join(keys)}"

    def runs_of(k):
        return entry_runs(summary, results, k)

    def legend_label(k):
        s = summary[k]
        text = f"{k} (reference)" if s["reference"] else k
        return text + (" (default)" if s["default"] else "")

    # Learning curves.
    window = max(1, meta["steps"] // 50)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k in points + refs:
        runs = runs_of(k)
        style = dict(
            color=color[k],
            ls="--" if summary[k]["reference"] else "-",
            lw=2.2 if summary[k]["default"] else 1.3,
        )
        loss = _mean_curve([_smooth(r["losses"], window) for r in runs])
        ax_loss.plot(np.arange(1, len(loss) + 1), loss, label=legend_label(k), **style)
        n_evals = min(len(r["evals"]) for r in runs)
        if n_evals:
            ys = np.array([[e["metric"] * scale for e in r["evals"][:n_evals]] for r in runs])
            xs = [e["step"] for e in runs[0]["evals"][:n_evals]]
            ax_metric.plot(xs, ys.mean(0), marker="o", ms=2.5, **style)
    ax_loss.set(xlabel="step", ylabel=f"training loss (moving mean of {window})", yscale="log")
    ax_metric.set(xlabel="step", ylabel=mlabel + " (periodic evaluation, mean over seeds)")

    # The settings differ by little at the end of the run: zoom the metric axis on their last
    # periodic evaluations (a reference far away is left outside the frame; quality.png shows
    # every final number).
    def last_eval(k):
        vals = [r["evals"][-1]["metric"] * scale for r in runs_of(k) if r["evals"]]
        return sum(vals) / len(vals) if vals else float("nan")

    finals = [v for v in map(last_eval, points) if math.isfinite(v)]
    if finals:
        lo, hi = min(finals), max(finals)
        pad = max(hi - lo, 0.005 * abs(hi), 1e-6)
        near = [
            v for v in map(last_eval, refs) if math.isfinite(v) and abs(v - (lo + hi) / 2) < 4 * pad
        ]
        lo, hi = min([lo, *near]), max([hi, *near])
        if meta["higher_is_better"]:
            ax_metric.set_ylim(lo - 3 * pad, hi + pad)
        else:
            ax_metric.set_ylim(lo - pad, hi + 3 * pad)
        ax_metric.set_title("zoomed on the settings' last evaluations", fontsize=9)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    fig.suptitle(f"{title}: learning curves (mean over seeds {meta['seeds']})")
    written.append(_save(fig, out / SWEEP_PLOTS["curves"]))

    # Final quality against the setting.
    grid = meta["grid"]
    first = grid[0]
    second = grid[1] if len(grid) > 1 else None
    x = np.arange(len(first["values"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = second["values"] if second else [None]
    width = 0.08 * (len(groups) - 1)
    for gi, gv in enumerate(groups):
        ys, es = [], []
        for v in first["values"]:
            want = {first["key"]: v, **({second["key"]: gv} if second else {})}
            k = next((p for p in points if summary[p]["values"] == want), None)
            s = summary[k]["metric"] if k else None
            ys.append(s["mean"] * scale if s else float("nan"))
            es.append((s["std"] or 0.0) * scale if s else 0.0)
        offset = (gi - (len(groups) - 1) / 2) * (width / max(1, len(groups) - 1))
        lab = f"{second['key']}={fmt_value(gv)}" if second else meta["optimizer"]
        ax.errorbar(x + offset, ys, yerr=es, marker="o", capsize=4, label=lab)
    for k in refs:
        m = summary[k]["metric"]
        ax.axhline(m["mean"] * scale, color=color[k], ls="--", lw=1.2, label=f"{k} (reference)")
        if m["std"]:
            ax.axhspan(
                (m["mean"] - m["std"]) * scale,
                (m["mean"] + m["std"]) * scale,
                color=color[k],
                alpha=0.1,
            )
    ticks = []
    for v in first["values"]:
        rel = first["relative"].get(fmt_value(v))
        ticks.append(f"{fmt_value(v)}\n({rel})" if rel else fmt_value(v))
    ax.set_xticks(x, ticks)
    ax.set(xlabel=first["key"], ylabel=f"final {mlabel} (mean ± std over seeds)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / SWEEP_PLOTS["quality"]))

    # Memory and time against the setting.
    names = points + refs
    xs = np.arange(len(names))
    ticks = [_short(summary[k], k) for k in names]
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    _state_bars(ax_mem, xs, summary, names)
    tkey, tname = time_key(meta)
    ms = [summary[k]["ms_per_step"]["mean"] for k in names]
    err = [summary[k]["ms_per_step"]["std"] or 0.0 for k in names]
    ax_time.bar(xs, ms, yerr=err, capsize=3, color=[color[k] for k in names], alpha=0.45)
    if tkey != "ms_per_step":
        ax_time.plot(
            xs,
            [summary[k][tkey]["mean"] for k in names],
            "k_",
            ms=18,
            mew=2,
            label=f"{tname} (compared in the findings)",
        )
        ax_time.legend(fontsize=8)
    ax_time.set(ylabel="ms", title="training time per step: wall clock (bars, ± std over seeds)")
    for ax in (ax_mem, ax_time):
        ax.set_xticks(xs, ticks, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(" / ".join(keys) + " (references by name)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    written.append(_save(fig, out / SWEEP_PLOTS["cost"]))

    # Pareto: quality against memory and against time.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, cost_of, xlabel in (
        (axes[0], lambda s: s["state_bytes"]["total"] / 2**20, "total optimizer state (MiB)"),
        (axes[1], lambda s: s[tkey]["mean"], f"{tname} (training)"),
    ):
        pts = [(cost_of(summary[k]), summary[k]["metric"]["mean"] * scale) for k in names]
        for k, (c, q) in zip(names, pts, strict=True):
            s = summary[k]
            ax.errorbar(
                c,
                q,
                yerr=(s["metric"]["std"] or 0.0) * scale,
                marker="s" if s["reference"] else "o",
                ms=7 if s["default"] else 5,
                color=color[k],
                capsize=3,
                ls="none",
            )
            ax.annotate(_short(s, k), (c, q), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto_front(pts, meta["higher_is_better"])
        if len(front) > 1:
            ax.plot(
                [pts[i][0] for i in front],
                [pts[i][1] for i in front],
                color="k",
                lw=0.8,
                alpha=0.5,
                label="Pareto front",
            )
            ax.legend(fontsize=8)
        ax.set(xlabel=xlabel, ylabel=f"final {mlabel}")
        ax.grid(alpha=0.3)
    axes[0].set_title("quality vs memory")
    axes[1].set_title("quality vs time")
    fig.suptitle(
        f"{title} (points: {' / '.join(keys)}; squares: references; "
        f"{'up' if meta['higher_is_better'] else 'down'} is better)"
    )
    written.append(_save(fig, out / SWEEP_PLOTS["pareto"]))
    return written
