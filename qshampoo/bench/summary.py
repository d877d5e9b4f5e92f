"""Per-optimizer summaries of a comparison's runs, and number formatting."""

from __future__ import annotations

import math
from statistics import mean, stdev
from typing import Any

# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def stats_of(values: list[float]) -> dict:
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
        if runs:
            out[name] = summarize_runs(runs)
    return out


def summarize_runs(runs: list[dict]) -> dict:
    """Statistics over the seeds of one configuration: metric, loss, memory, time, stability."""
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
    return {
        "seeds": [r["seed"] for r in runs],
        "metric": stats_of([r["final"]["metric"] for r in runs]),
        "loss": stats_of([r["final"]["loss"] for r in runs]),
        "state_bytes": {
            k: max(int(s.get(k, 0)) for s in state)
            for k in ("preconditioners", "base_state", "total")
        },
        "peak_rss_bytes": stats_of([r["memory"]["peak_rss_bytes"] for r in runs]),
        "cuda_peak_bytes": stats_of(cuda) if cuda else None,
        "wall_s": stats_of([r["time"]["wall_s"] for r in runs]),
        "train_s": stats_of([r["time"]["train_s"] for r in runs]),
        "ms_per_step": stats_of([r["time"]["ms_per_step"] for r in runs]),
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


def fmt_value(v: Any) -> str:
    """A setting's value as labels, run folders and reports write it (``0.9``, ``1e-05``, ``64``):
    the sweep's ``relative`` entries are keyed by it."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def metric_scale(meta: dict) -> float:
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
