"""The report's PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean

from .summary import metric_scale

PLOTS = {
    "curves_step": "curves_step.png",
    "curves_time": "curves_time.png",
    "memory": "memory.png",
    "time": "time.png",
    "quant_error": "quant_error.png",
}


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc, buf = [], 0.0, []
    for v in values:
        v = v if v is not None and math.isfinite(v) else float("nan")
        buf.append(v)
        acc += v
        if len(buf) > window:
            acc -= buf.pop(0)
        out.append(acc / len(buf))
    return out


def _mean_curve(curves: list[list[float]]) -> list[float]:
    n = min(len(c) for c in curves)
    return [mean(c[i] for c in curves) for i in range(n)]


def _time_of_step(run: dict):
    """Training time at every step, interpolated between evaluation points."""
    import numpy as np

    steps = [0] + [e["step"] for e in run["evals"]]
    times = [0.0] + [e["train_s"] for e in run["evals"]]
    return np.interp(np.arange(1, len(run["losses"]) + 1), steps, times)


def _save(fig, path: Path) -> str:
    """Lay ``fig`` out, write it to ``path`` and close it; return the file's name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _state_bars(ax, x, summary: dict, names: list[str]) -> None:
    """Each entry's optimizer state (memory_report) in MiB at ``x``: the base optimizer's, the
    preconditioners' stacked on it."""
    import numpy as np

    pre = np.array([summary[n]["state_bytes"]["preconditioners"] for n in names]) / 2**20
    base = np.array([summary[n]["state_bytes"]["base_state"] for n in names]) / 2**20
    ax.bar(x, base, color="#9ab", label="base optimizer state")
    ax.bar(x, pre, bottom=base, color="#c63", label="preconditioners")
    ax.set(ylabel="optimizer state (MiB)", title="optimizer state (memory_report)")
    ax.legend(fontsize=8)


def write_plots(out: Path, meta: dict, results: list[dict], summary: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    written = []
    scale = metric_scale(meta)
    mlabel = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {n: colors[i % len(colors)] for i, n in enumerate(summary)}
    window = max(1, meta["steps"] // 50)

    for axis in ("step", "time"):
        fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
        for name in summary:
            runs = [r for r in results if r["optimizer"] == name]
            loss_curves = [_smooth(r["losses"], window) for r in runs]
            loss = _mean_curve(loss_curves)
            if axis == "step":
                x = np.arange(1, len(loss) + 1)
            else:
                x = np.mean([_time_of_step(r)[: len(loss)] for r in runs], axis=0)
            ax_loss.plot(x, loss, color=color[name], label=name)
            n_evals = min(len(r["evals"]) for r in runs)
            if n_evals:
                ys = np.array([[e["metric"] * scale for e in r["evals"][:n_evals]] for r in runs])
                key = "step" if axis == "step" else "train_s"
                xs = np.mean([[e[key] for e in r["evals"][:n_evals]] for r in runs], axis=0)
                ax_metric.plot(xs, ys.mean(0), marker="o", ms=3, color=color[name], label=name)
                if len(runs) > 1:
                    ax_metric.fill_between(xs, ys.min(0), ys.max(0), color=color[name], alpha=0.15)
        xlabel = "step" if axis == "step" else "training time (s)"
        ax_loss.set(xlabel=xlabel, ylabel=f"training loss (moving mean of {window})", yscale="log")
        ax_metric.set(xlabel=xlabel, ylabel=mlabel + " (periodic evaluation)")
        ax_loss.yaxis.set_major_locator(
            matplotlib.ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
        )
        ax_loss.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax_loss.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        for ax in (ax_loss, ax_metric):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{meta['task']}: mean over seeds {meta['seeds']} (band: min–max)")
        written.append(_save(fig, out / PLOTS[f"curves_{axis}"]))

    names = list(summary)
    x = np.arange(len(names))
    gpu = any(s["cuda_peak_bytes"] for s in summary.values())
    fig, axes = plt.subplots(1, 3 if gpu else 2, figsize=(13 if gpu else 10, 4))
    _state_bars(axes[0], x, summary, names)
    rss = np.array([summary[n]["peak_rss_bytes"]["mean"] for n in names]) / 2**20
    axes[1].bar(x, rss, color=[color[n] for n in names])
    axes[1].set(ylabel="MiB", title="peak process memory (RSS)")
    if gpu:
        cuda = [
            summary[n]["cuda_peak_bytes"]["mean"] if summary[n]["cuda_peak_bytes"] else 0
            for n in names
        ]
        axes[2].bar(x, np.array(cuda) / 2**20, color=[color[n] for n in names])
        axes[2].set(ylabel="MiB", title="CUDA peak allocated")
    for ax in axes:
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    written.append(_save(fig, out / PLOTS["memory"]))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (axes[0], "ms_per_step", "training time per step (ms)"),
        (axes[1], "wall_s", "wall time per run incl. evaluation (s)"),
    ):
        means = [summary[n][key]["mean"] for n in names]
        errs = [summary[n][key]["std"] or 0.0 for n in names]
        ax.bar(x, means, yerr=errs, capsize=3, color=[color[n] for n in names])
        ax.set_title(title)
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    written.append(_save(fig, out / PLOTS["time"]))

    with_qe = [n for n in names if summary[n]["quant_error"]["series"]]
    if with_qe:
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in with_qe:
            s, v = zip(*summary[n]["quant_error"]["series"], strict=True)
            ax.plot(s, v, marker="o", ms=3, color=color[n], label=n)
        ax.set(
            xlabel="step",
            ylabel="mean relative error ‖x − D(Q(x))‖ / ‖x‖",
            title="quantization error of what each variant stores",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / PLOTS["quant_error"]))
    return written
