"""The report a comparison leaves behind: ``report.md``, ``results.json`` and PNG plots.

Every number in the report comes from the runs' results; the verdict paragraph is assembled
from them by rules written out in :func:`verdict`, with no claim fixed in advance.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from statistics import mean, stdev

from . import stability

PLOTS = {
    "curves_step": "curves_step.png",
    "curves_time": "curves_time.png",
    "memory": "memory.png",
    "time": "time.png",
    "quant_error": "quant_error.png",
}


# --------------------------------------------------------------------------------------------
# Machine and versions
# --------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpus": [],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_bytes"] = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_bytes": p.total_memory})
        info["cuda"] = torch.version.cuda
    return info


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in (
        "qshampoo",
        "torch",
        "numpy",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "torchao",
        "bitsandbytes",
        "pytorch_optimizer",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if dist in ("torch", "qshampoo"):  # importable from a checkout without metadata
                module = __import__(dist)
                out[dist] = getattr(module, "__version__", None)
    out["qshampoo_git"] = _git_commit()
    return out


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": mean(finite) if finite else float("nan"),
        "std": stdev(finite) if len(finite) > 1 else None,
        "n": len(finite),
        "values": values,
    }


def summarize(meta: dict, results: list[dict]) -> dict[str, dict]:
    """Per optimizer: metric and loss over seeds, memory, time and stability."""
    out: dict[str, dict] = {}
    for name in meta["optimizers"]:
        runs = [r for r in results if r["optimizer"] == name]
        if not runs:
            continue
        state = [r["memory"]["optimizer_state"] for r in runs]
        cuda = [r["memory"]["cuda_peak_bytes"] for r in runs if r["memory"]["cuda_peak_bytes"]]
        # Quantization error over time: mean over seeds at each evaluation step. Exactly 0 means
        # no quantized factor has been updated yet, not a perfect quantization: left out.
        qe: dict[int, list[float]] = {}
        for r in runs:
            for e in r["evals"]:
                if e.get("quant_error"):
                    qe.setdefault(e["step"], []).append(e["quant_error"])
        qseries = [[s, mean(v)] for s, v in sorted(qe.items())]
        final_qe = [r["diagnostics"].get("quant_error") for r in runs]
        final_qe = [q for q in final_qe if q]
        out[name] = {
            "seeds": [r["seed"] for r in runs],
            "metric": _stats([r["final"]["metric"] for r in runs]),
            "loss": _stats([r["final"]["loss"] for r in runs]),
            "state_bytes": {
                k: max(int(s.get(k, 0)) for s in state)
                for k in ("preconditioners", "base_state", "total")
            },
            "peak_rss_bytes": _stats([r["memory"]["peak_rss_bytes"] for r in runs]),
            "cuda_peak_bytes": _stats(cuda) if cuda else None,
            "wall_s": _stats([r["time"]["wall_s"] for r in runs]),
            "train_s": _stats([r["time"]["train_s"] for r in runs]),
            "ms_per_step": _stats([r["time"]["ms_per_step"] for r in runs]),
            "stability": {
                "nonfinite_losses": sum(r["stability"]["nonfinite_losses"] for r in runs),
                "optimizer_nonfinite_steps": sum(
                    r["stability"]["optimizer_nonfinite_steps"] for r in runs
                ),
                "loss_spikes": sum(r["stability"]["loss_spikes"] for r in runs),
                "root_failures": sum(r["stability"]["root_failures"] for r in runs),
                "cholesky_failures": sum(r["stability"]["cholesky_failures"] for r in runs),
                "diverged_runs": sum(bool(r["stability"]["diverged"]) for r in runs),
            },
            "quant_error": {
                "series": qseries,
                "first": qseries[0][1] if qseries else None,
                "last": qseries[-1][1] if qseries else None,
                "max": max(v for _, v in qseries) if qseries else None,
                "final": mean(final_qe) if final_qe else None,
            },
            "isolated": all(r.get("isolated", False) for r in runs),
            "hparams": runs[0]["hparams"],
            "num_params": runs[0]["num_params"],
        }
    return out


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "—"
    n = float(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _scale(meta: dict) -> float:
    return 100.0 if meta.get("percent") else 1.0


def fmt_mean_std(stats: dict, scale: float = 1.0, digits: int = 2) -> str:
    m = stats["mean"]
    if not math.isfinite(m):
        return "diverged"
    text = f"{m * scale:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {stats['std'] * scale:.{digits}f}"
    bad = len(stats["values"]) - stats["n"]
    if bad:
        text += f" ({bad} diverged)"
    return text


def _qe_text(q: dict) -> str:
    if q["first"] is None:
        return "—"
    if len(q["series"]) == 1:
        return f"{q['first']:.3f}"
    return f"{q['first']:.3f} → {q['last']:.3f} (max {q['max']:.3f})"


def _second_column(meta: dict) -> str | None:
    """The column after the metric: the loss when the metric is something else, perplexity
    (exp of the loss) for a language model whose metric is the loss, else none."""
    if not meta.get("metric_is_loss"):
        return "test loss"
    return "perplexity" if meta.get("perplexity") else None


def _second_cell(meta: dict, s: dict) -> str:
    if not meta.get("metric_is_loss"):
        return fmt_mean_std(s["loss"], 1.0, 4)
    ppl = [math.exp(v) if v is not None and math.isfinite(v) else v for v in s["loss"]["values"]]
    return fmt_mean_std(_stats(ppl), 1.0, 2)


def results_table(meta: dict, summary: dict) -> str:
    scale = _scale(meta)
    metric = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    gpu = any(s["cuda_peak_bytes"] for s in summary.values())
    second = _second_column(meta)
    head = [
        "optimizer",
        metric,
        *([second] if second else []),
        "preconditioner state",
        "other optimizer state",
        "peak RSS",
    ]
    if gpu:
        head.append("CUDA peak")
    head += [
        "wall time (s)",
        "ms/step",
        "non-finite steps",
        "loss spikes",
        "root / Cholesky failures",
        "4-bit quant. error (first → last eval)",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary.items():
        st = s["stability"]
        row = [
            f"`{name}`",
            fmt_mean_std(s["metric"], scale),
            *([_second_cell(meta, s)] if second else []),
            fmt_bytes(s["state_bytes"]["preconditioners"]),
            fmt_bytes(s["state_bytes"]["base_state"]),
            fmt_bytes(s["peak_rss_bytes"]["mean"]),
        ]
        if gpu:
            row.append(fmt_bytes(s["cuda_peak_bytes"]["mean"] if s["cuda_peak_bytes"] else None))
        row += [
            fmt_mean_std(s["wall_s"], 1.0, 1),
            fmt_mean_std(s["ms_per_step"], 1.0, 1),
            str(st["nonfinite_losses"] + st["optimizer_nonfinite_steps"]),
            str(st["loss_spikes"]),
            f"{st['root_failures']} / {st['cholesky_failures']}",
            _qe_text(s["quant_error"]),
        ]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def hparams_table(summary: dict, lr_tuned: dict | None = None) -> str:
    keys = ["lr", "weight_decay", "betas", "momentum", "stat_interval", "root_interval"]
    present = [k for k in keys if any(k in s["hparams"] for s in summary.values())]
    extra = sorted({k for s in summary.values() for k in s["hparams"]} - set(keys) - {"base"})
    cols = present + extra
    rows = [
        "| optimizer | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, s in summary.items():
        vals = []
        for k in cols:
            v = s["hparams"].get(k, "")
            if isinstance(v, list):
                v = "(" + ", ".join(str(x) for x in v) + ")"
            text = f"{v:g}" if isinstance(v, float) else str(v)
            if k == "lr" and lr_tuned is not None and lr_tuned.get(name) is False:
                text += " (family default, not tuned)"
            vals.append(text)
        rows.append(f"| `{name}` | " + " | ".join(vals) + " |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------

LABELS = {
    "adamw": "AdamW",
    "sgd": "SGD",
    "shampoo": "32-bit Shampoo",
    "shampoo4bit": "4-bit Shampoo (CQ+EF)",
    "shampoo4bit-naive": "naive 4-bit Shampoo (VQ)",
    "shampoo4bit-eigen": "eigenvector 4-bit Shampoo",
    "shampoo4bit-cholesky": "4-bit Shampoo (CQ, no EF)",
}


def label(name: str) -> str:
    return LABELS.get(name, name)


def compare_means(a: dict, b: dict) -> tuple[float, float | None]:
    """``(mean_a - mean_b, noise)``; ``noise`` is twice the standard error of the difference
    (about a 95% band), or ``None`` with fewer than two seeds on either side."""
    diff = a["mean"] - b["mean"]
    if a["std"] is None or b["std"] is None:
        return diff, None
    return diff, 2.0 * math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])


def _diff_phrase(meta: dict, a: dict, b: dict, other: str) -> str:
    scale = _scale(meta)
    unit = " points" if meta.get("percent") else ""
    diff, noise = compare_means(a, b)
    better = diff > 0 if meta["higher_is_better"] else diff < 0
    size = abs(diff) * scale
    if size == 0:
        core = f"the same as {other}"
    else:
        core = f"{size:.2f}{unit} {'better' if better else 'worse'} than {other}"
    if noise is None:
        return core + " (one seed: no noise estimate)"
    within = abs(diff) <= noise
    return core + (f" ({'within' if within else 'beyond'} seed noise, ±{noise * scale:.2f}{unit})")


def verdict(meta: dict, summary: dict) -> str:
    """A short paragraph built from the measured numbers only."""
    if not summary:
        return "No run finished."
    hib = meta["higher_is_better"]
    scale = _scale(meta)
    unit = "%" if meta.get("percent") else ""
    finite = {n: s for n, s in summary.items() if math.isfinite(s["metric"]["mean"])}
    parts = []
    seeds = len(meta["seeds"])
    if finite:
        best = (max if hib else min)(finite, key=lambda n: finite[n]["metric"]["mean"])
        parts.append(
            f"After {meta['steps']} steps ({seeds} seed{'s' if seeds > 1 else ''}), the best final "
            f"{meta['metric_name']} was {label(best)}'s "
            f"({finite[best]['metric']['mean'] * scale:.2f}{unit})."
        )
    baseline = next((n for n in summary if not n.startswith("shampoo")), None)
    reference = "shampoo" if "shampoo" in summary else None
    four_bit = [n for n in summary if n.startswith("shampoo4bit")]
    for name in ["shampoo", *four_bit] if reference else four_bit:
        if name not in finite:
            continue
        comps = []
        if reference and name != reference and reference in finite:
            comps.append(
                _diff_phrase(
                    meta, finite[name]["metric"], finite[reference]["metric"], label(reference)
                )
            )
        if baseline and baseline in finite:
            comps.append(
                _diff_phrase(
                    meta, finite[name]["metric"], finite[baseline]["metric"], label(baseline)
                )
            )
        if comps:
            parts.append(f"{label(name)} was " + " and ".join(comps) + ".")
    # How much of 32-bit Shampoo's gain over the baseline a 4-bit variant keeps.
    if reference in finite and baseline in finite:
        gain, noise = compare_means(finite[reference]["metric"], finite[baseline]["metric"])
        gain = gain if hib else -gain
        if gain > 0 and (noise is None or gain > noise):
            for name in four_bit:
                if name in finite:
                    own = finite[name]["metric"]["mean"] - finite[baseline]["metric"]["mean"]
                    own = own if hib else -own
                    parts.append(
                        f"{label(name)} kept {100 * own / gain:.0f}% of 32-bit Shampoo's gain "
                        f"over {label(baseline)}."
                    )
        else:
            parts.append(
                f"32-bit Shampoo did not beat {label(baseline)} beyond seed noise here, so this "
                "run cannot show what the 4-bit variants keep of a gain."
            )
    # Memory.
    if reference:
        ref_pre = summary[reference]["state_bytes"]["preconditioners"]
        for name in four_bit:
            pre = summary[name]["state_bytes"]["preconditioners"]
            if pre and ref_pre:
                parts.append(
                    f"{label(name)}'s preconditioners took {fmt_bytes(pre)} against "
                    f"{fmt_bytes(ref_pre)} in 32 bits ({ref_pre / pre:.1f}× less)."
                )
    if baseline:
        base_total = summary[baseline]["state_bytes"]["total"]
        if base_total:
            ratios = ", ".join(
                f"{label(n)} {summary[n]['state_bytes']['total'] / base_total:.2f}×"
                for n in summary
                if n != baseline
            )
            if ratios:
                parts.append(
                    f"Total optimizer state relative to {label(baseline)} "
                    f"({fmt_bytes(base_total)}): {ratios}."
                )
    rss = {n: s["peak_rss_bytes"]["mean"] for n, s in summary.items()}
    lo, hi = min(rss, key=rss.get), max(rss, key=rss.get)
    if lo != hi:
        parts.append(
            f"Peak process memory ranged from {fmt_bytes(rss[lo])} ({label(lo)}) to "
            f"{fmt_bytes(rss[hi])} ({label(hi)})."
        )
    gpu = {n: s["cuda_peak_bytes"]["mean"] for n, s in summary.items() if s["cuda_peak_bytes"]}
    if len(gpu) > 1:
        glo, ghi = min(gpu, key=gpu.get), max(gpu, key=gpu.get)
        parts.append(
            f"CUDA peak memory ranged from {fmt_bytes(gpu[glo])} ({label(glo)}) to "
            f"{fmt_bytes(gpu[ghi])} ({label(ghi)})."
        )
    # Time.
    if baseline:
        base_ms = summary[baseline]["ms_per_step"]["mean"]
        times = ", ".join(
            f"{label(n)} {s['ms_per_step']['mean'] / base_ms:.2f}×"
            for n, s in summary.items()
            if n != baseline
        )
        if times:
            parts.append(
                f"Time per step relative to {label(baseline)} ({base_ms:.1f} ms): {times}."
            )
    # Stability.
    troubled = []
    for n, s in summary.items():
        st = s["stability"]
        issues = []
        nonfinite = st["nonfinite_losses"] + st["optimizer_nonfinite_steps"]
        if nonfinite:
            issues.append(f"{nonfinite} non-finite steps")
        if st["loss_spikes"]:
            issues.append(f"{st['loss_spikes']} loss spikes")
        if st["root_failures"]:
            issues.append(f"{st['root_failures']} root failures")
        if st["cholesky_failures"]:
            issues.append(f"{st['cholesky_failures']} Cholesky failures")
        if st["diverged_runs"]:
            issues.append(f"{st['diverged_runs']} diverged runs")
        if issues:
            troubled.append(f"{label(n)}: {', '.join(issues)}")
    if troubled:
        parts.append("Stability events (all seeds): " + "; ".join(troubled) + ".")
    else:
        parts.append(
            "No run had a non-finite step, a loss spike, a root or Cholesky failure, or diverged."
        )
    qe = {n: s["quant_error"] for n, s in summary.items() if s["quant_error"]["first"] is not None}
    if qe:
        parts.append(
            "Mean relative quantization error of the 4-bit factors, first → last evaluation: "
            + ", ".join(f"{label(n)} {q['first']:.3f} → {q['last']:.3f}" for n, q in qe.items())
            + "."
        )
    return " ".join(parts)


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


def write_plots(out: Path, meta: dict, results: list[dict], summary: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    written = []
    scale = _scale(meta)
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
        fig.tight_layout()
        path = out / PLOTS[f"curves_{axis}"]
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

    names = list(summary)
    x = np.arange(len(names))
    gpu = any(s["cuda_peak_bytes"] for s in summary.values())
    fig, axes = plt.subplots(1, 3 if gpu else 2, figsize=(13 if gpu else 10, 4))
    pre = np.array([summary[n]["state_bytes"]["preconditioners"] for n in names]) / 2**20
    base = np.array([summary[n]["state_bytes"]["base_state"] for n in names]) / 2**20
    axes[0].bar(x, base, color="#9ab", label="base optimizer state")
    axes[0].bar(x, pre, bottom=base, color="#c63", label="preconditioners")
    axes[0].set(ylabel="optimizer state (MiB)", title="optimizer state (memory_report)")
    axes[0].legend(fontsize=8)
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
    fig.tight_layout()
    fig.savefig(out / PLOTS["memory"], dpi=110)
    plt.close(fig)
    written.append(PLOTS["memory"])

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
    fig.tight_layout()
    fig.savefig(out / PLOTS["time"], dpi=110)
    plt.close(fig)
    written.append(PLOTS["time"])

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
        fig.tight_layout()
        fig.savefig(out / PLOTS["quant_error"], dpi=110)
        plt.close(fig)
        written.append(PLOTS["quant_error"])
    return written


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

DEFINITIONS = f"""\
**What the columns mean.** *{{metric}}*: the final model on the evaluation set named above (mean ±
sample standard deviation over seeds). *Test loss*: the training loss function on the same set
(*perplexity*: its exponential, for a language model whose metric is the loss).
*Preconditioner state* / *other optimizer state*: bytes of optimizer state from the optimizer's
`memory_report()` (Shampoo's factors and roots / the base optimizer's moments and everything else;
for torch optimizers, all of `opt.state`). *Peak RSS*: the run's resident-memory high-water mark
(Linux `VmHWM`, reset at the start of the run; each run in its own process unless noted) — it
includes the dataset, PyTorch and the activations, not only the optimizer. *Wall time*: training
plus evaluation of one run; *ms/step*: training time only, divided by the steps.
*Non-finite steps*: steps with a NaN/inf loss plus steps the optimizer itself skipped.
*Loss spike*: a step whose training loss exceeds the median of the previous
{stability.SPIKE_WINDOW} losses by all of: a factor {stability.SPIKE_RATIO:g},
{stability.SPIKE_MADS:g} robust standard deviations (1.4826 × MAD), and
{100 * stability.SPIKE_MIN_RISE:g}% of the initial loss. *Root / Cholesky failures*: inverse
roots or Cholesky factorizations that failed and kept the previous value (summed over seeds).
*Quantization error*: mean relative error ‖x − D(Q(x))‖/‖x‖ of what the 4-bit factors store
(the Cholesky factor for CQ and CQ+EF, the statistics matrix for VQ: compare it over time within a
variant, not across variants) at their latest statistics update, at the first and last periodic
evaluation (mean over seeds).
"""


def _machine_line(machine: dict, threads: int | None = None) -> str:
    threads = threads or machine["torch_threads"]
    text = f"{machine['cpu']}, {machine['cores']} cores ({threads} torch threads per run)"
    if machine.get("memory_bytes"):
        text += f", {fmt_bytes(machine['memory_bytes'])} RAM"
    for g in machine.get("gpus", []):
        text += f", GPU {g['name']} ({fmt_bytes(g['memory_bytes'])})"
    return text


def render_markdown(meta: dict, summary: dict, machine: dict, vers: dict, plots: list[str]) -> str:
    lines = [f"# qshampoo bench: {meta['task']}", ""]
    if meta.get("command"):
        lines += [f"Command: `{meta['command']}`", ""]
    lines += [
        f"Date: {meta.get('date', '')}. Machine: {_machine_line(machine, meta.get('threads'))}; "
        f"device "
        f"`{meta['device']}`. torch {vers.get('torch')}, qshampoo {vers.get('qshampoo', '?')}"
        + (f" (git {vers['qshampoo_git']})" if vers.get("qshampoo_git") else "")
        + ".",
        "",
        f"Task: {meta.get('task_description', meta['task'])}. {meta['steps']} steps of batch "
        f"{meta['batch_size']}, seeds {', '.join(map(str, meta['seeds']))}; learning rate: "
        f"{100 * meta['warmup']:g}% linear warm-up, cosine decay to {meta['final_lr']:g}× peak. "
        f"Same seed = same initialisation and data order for every optimizer. Total time of the "
        f"comparison: {meta['bench_wall_s'] / 60:.1f} min. Final numbers on "
        f"{meta.get('final_eval_what') or 'the test set'}.",
        "",
    ]
    load = meta.get("load_average") or {}
    if load.get("start") and load.get("end"):
        lines += [
            f"Machine load (1-minute load average) at start / end: {load['start'][0]:g} / "
            f"{load['end'][0]:g} on {machine['cores']} cores; other work on the machine slows "
            "every timing below.",
            "",
        ]
    if meta.get("validation"):
        lines += [
            "**Evaluated on a validation split held out of the training data** (tuning mode), "
            "not on the test set.",
            "",
        ]
    lines += ["## Results", "", results_table(meta, summary), ""]
    not_isolated = [n for n, s in summary.items() if not s["isolated"]]
    if not_isolated:
        lines += [
            f"Runs of {', '.join(not_isolated)} shared one process: their peak RSS is measured "
            "from a reset high-water mark but can be lowered by memory freed by earlier runs.",
            "",
        ]
    lines += ["## Verdict", "", verdict(meta, summary), ""]
    lines += [DEFINITIONS.format(metric=meta["metric_name"]), ""]
    lines += ["## Hyperparameters", "", hparams_table(summary, meta.get("lr_tuned")), ""]
    if meta.get("lr_source"):
        lines += [f"Learning rates: {meta['lr_source']}.", ""]
    if meta.get("overrides"):
        lines += [f"Overrides (`--hp` / `hparams=`): `{json.dumps(meta['overrides'])}`.", ""]
    if meta.get("skipped"):
        lines += [
            "Skipped (not available here): "
            + "; ".join(f"`{k}` ({v})" for k, v in meta["skipped"].items()),
            "",
        ]
    lines += ["## Per seed", "", _per_seed_table(meta, summary), ""]
    lines += ["## Plots", ""]
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    return "\n".join(lines)


def _per_seed_table(meta: dict, summary: dict) -> str:
    scale = _scale(meta)
    seeds = meta["seeds"]
    rows = [
        "| optimizer | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for name, s in summary.items():
        by_seed = dict(zip(s["seeds"], s["metric"]["values"], strict=True))
        cells = []
        for seed in seeds:
            v = by_seed.get(seed)
            cells.append("—" if v is None else f"{v * scale:.2f}")
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_report(out: Path, meta: dict, results: list[dict]) -> dict:
    """Write ``report.md``, ``results.json`` and the plots into ``out``; return the JSON."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    meta.setdefault("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    summary = summarize(meta, results)
    machine = machine_info()
    vers = versions()
    plots = write_plots(out, meta, results, summary)
    doc = {
        "meta": meta,
        "machine": machine,
        "versions": vers,
        "summary": summary,
        "verdict": verdict(meta, summary),
        "runs": results,
        "plots": plots,
    }
    from .runner import _jsonable, atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(_jsonable(doc), indent=1))
    atomic_write_text(out / "report.md", render_markdown(meta, summary, machine, vers, plots))
    return doc
