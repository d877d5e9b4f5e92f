"""Statistics of a report's runs: per entry over seeds, paired comparisons with 95 % intervals
(runs with the same seed share initialisation and data order), the time to reach the baseline's
quality, and number formatting."""

from __future__ import annotations

import math
from statistics import mean, median, stdev
from typing import Any

from . import optimizers as optim_mod
from .stability import finite


def stats_of(values: list[float | None]) -> dict:
    ok = finite(values)
    return {
        "mean": mean(ok) if ok else float("nan"),
        "std": stdev(ok) if len(ok) > 1 else None,
        "n": len(ok),
        "values": values,
    }


def entry_of(run: dict) -> str:
    """The report entry a run belongs to: its optimizer in a comparison, its setting (or its
    reference optimizer) in a sweep."""
    return run.get("entry") or run.get("setting") or run["optimizer"]


def runs_of(results: list[dict], entry: str) -> list[dict]:
    """The full-schedule runs of ``entry`` (the time to quality's shorter ones left out)."""
    return [r for r in results if entry_of(r) == entry and "budget" not in r]


def summarize_runs(runs: list[dict]) -> dict:
    """Statistics over the seeds of one entry: metric, loss, memory, time, stability."""
    mem, st, tm = [r["memory"] for r in runs], [r["stability"] for r in runs], "time"
    # Quantization error over time: mean over seeds at each evaluation step. Exactly 0 means
    # no quantized factor has been updated yet, not a perfect quantization: left out.
    qe: dict[int, list[float]] = {}
    for r in runs:
        for e in r["evals"]:
            if e.get("quant_error"):
                qe.setdefault(e["step"], []).append(e["quant_error"])
    qseries = [[s, mean(v)] for s, v in sorted(qe.items())]
    times = ("wall_s", "train_s", "cpu_s", "ms_per_step", "cpu_ms_per_step")
    return {
        "seeds": [r["seed"] for r in runs],
        "metric": stats_of([r["final"]["metric"] for r in runs]),
        "loss": stats_of([r["final"]["loss"] for r in runs]),
        "state_bytes": {
            k: max(int(m["optimizer_state"].get(k, 0)) for m in mem)
            for k in ("preconditioners", "base_state", "total")
        },
        **{
            k: stats_of([m.get(k) for m in mem])
            for k in ("optimizer_peak_bytes", "rss_added_bytes", "peak_rss_bytes")
        },
        **{k: stats_of([r[tm].get(k) for r in runs]) for k in times},
        "stability": {
            **{
                k: sum(s[k] for s in st)
                for k in (
                    "nonfinite_losses",
                    "optimizer_nonfinite_steps",
                    "loss_spikes",
                    "root_failures",
                    "cholesky_failures",
                )
            },
            "diverged_runs": sum(bool(s["diverged"]) for s in st),
            "grad_norm_ratio": stats_of([s.get("grad_norm_ratio") for s in st]),
        },
        "quant_error": {
            "series": qseries,
            "first": qseries[0][1] if qseries else None,
            "last": qseries[-1][1] if qseries else None,
        },
        "isolated": all(r.get("isolated", False) for r in runs),
        "hparams": runs[0]["hparams"],
        "num_params": runs[0].get("num_params"),
    }


def events(st: dict) -> dict[str, int]:
    """A summary's stability events by kind (the keys are the glossary's)."""
    return {
        "nonfinite": st["nonfinite_losses"] + st["optimizer_nonfinite_steps"],
        "spikes": st["loss_spikes"],
        "failures": st["root_failures"] + st["cholesky_failures"],
        "diverged": st["diverged_runs"],
    }


def roles(names: list[str]) -> dict[str, str | None]:
    """Who is compared with whom, from the registry (never from the names): ``baseline``, the
    first optimizer that is not Shampoo nor a peer (AdamW by default; a peer only when nothing
    else is); ``reference``, 32-bit Shampoo; ``candidate``, the first Shampoo stored in fewer
    bits (else the first Shampoo)."""
    reg = optim_mod.REGISTRY
    others = [n for n in names if n in reg and reg[n].bits is None]
    baseline = next((n for n in others if not reg[n].peer), others[0] if others else None)
    reference = next((n for n in names if n in reg and reg[n].bits == 32), None)
    quant = [n for n in names if optim_mod.quantized(n)]
    return {
        "baseline": baseline,
        "reference": reference,
        "candidate": quant[0] if quant else reference,
    }


def by_seed(runs: list[dict], value) -> dict[int, float]:
    """``{seed: value(run)}`` over the runs whose value is finite."""
    out = {}
    for r in runs:
        v = value(r)
        if v is not None and math.isfinite(v):
            out[r["seed"]] = v
    return out


def paired(
    a: dict[int, float],
    b: dict[int, float],
    ratio: bool = False,
    noise: tuple[float, int] | None = None,
) -> dict | None:
    """``a`` against ``b`` seed by seed: the mean difference (``ratio``: the geometric mean of
    ``a / b``) with its 95 % Student-t interval over the seeds both have (``lo`` and ``hi`` are
    ``None`` when it cannot be estimated); ``None`` without a common seed.

    ``noise``: ``(sigma2, dof)``, a run-to-run variance estimated over more runs than these
    (a sweep's, :func:`pooled_noise`), used instead of the differences' own spread."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if ratio:
        seeds = [s for s in seeds if a[s] > 0 and b[s] > 0]
        d = [math.log(a[s] / b[s]) for s in seeds]
    else:
        d = [a[s] - b[s] for s in seeds]
    if not d:
        return None
    m, half = mean(d), None
    if noise is not None and noise[0] is not None and noise[1] > 0:
        half = stats.t.ppf(0.975, noise[1]) * math.sqrt(2 * noise[0] / len(d))
    elif noise is None and len(d) > 1:
        half = stats.t.ppf(0.975, len(d) - 1) * stdev(d) / math.sqrt(len(d))
    back = math.exp if ratio else float
    return {
        "mean": back(m),
        "lo": None if half is None else back(m - half),
        "hi": None if half is None else back(m + half),
        "n": len(d),
    }


def verdict_of(p: dict | None, higher_is_better: bool = True) -> str:
    """``"better"`` / ``"worse"`` when the 95 % interval excludes no difference, ``"same"`` when
    it includes it, ``"unknown"`` without an interval."""
    if p is None or p["lo"] is None:
        return "unknown"
    if p["lo"] > 0 or p["hi"] < 0:
        return "better" if (p["mean"] > 0) == higher_is_better else "worse"
    return "same"


def pooled_noise(table: dict[str, dict[int, float]]) -> tuple[float | None, int]:
    """Run-to-run variance at a fixed seed, pooled over a sweep: ``(sigma2, dof)``.

    ``table`` maps each configuration to ``{seed: final metric}``. The model is additive —
    metric = configuration effect + seed effect + noise — fitted on the configurations that
    finished every seed; ``sigma2`` is the residual variance with ``(C-1)(n-1)`` degrees of
    freedom for C configurations and n seeds (``None`` when that is 0)."""
    # Every seed any configuration has; a configuration without all of them (a diverged run)
    # is left out, unless that leaves fewer than two: then the seeds they all share.
    seeds = sorted(set().union(*table.values()))
    rows = [[v[k] for k in seeds] for v in table.values() if set(v) >= set(seeds)]
    if len(rows) < 2 and table:
        seeds = sorted(set.intersection(*(set(v) for v in table.values())))
        rows = [[v[k] for k in seeds] for v in table.values()]
    c, n = len(rows), len(seeds)
    dof = (c - 1) * (n - 1)
    if dof < 1:
        return None, 0
    row_mean = [sum(r) / n for r in rows]
    col_mean = [sum(r[j] for r in rows) / c for j in range(n)]
    grand = sum(row_mean) / c
    ss = sum(
        (rows[i][j] - row_mean[i] - col_mean[j] + grand) ** 2 for i in range(c) for j in range(n)
    )
    return ss / dof, dof


def time_to_quality(
    results: list[dict], name: str, baseline: str, hib: bool, clock: str = "train_s"
) -> dict:
    """Per seed, the shortest training budget of ``name`` (runs with ``"budget"``, each a full
    schedule of that fraction of the steps, and the full run) whose final metric reaches the
    baseline's full-run final metric of the same seed: ``{seed: {"budget", "steps",
    "time_ratio"}}``, ``None`` values where no budget reached it. ``time_ratio`` compares the
    runs' ``clock`` (``"train_s"``, or ``"cpu_s"``: CPU time, less disturbed by other work)."""
    out = {}
    for base in runs_of(results, baseline):
        target = base["final"]["metric"]
        reached = [
            r
            for r in results
            if r["optimizer"] == name
            and r["seed"] == base["seed"]
            and math.isfinite(r["final"]["metric"] or math.nan)
            and (r["final"]["metric"] >= target if hib else r["final"]["metric"] <= target)
        ]
        best = min(reached, key=lambda r: r.get("budget", 1.0), default=None)
        out[base["seed"]] = {
            "budget": None if best is None else best.get("budget", 1.0),
            "steps": None if best is None else best["completed_steps"],
            "time_ratio": None if best is None else best["time"][clock] / base["time"][clock],
        }
    return out


def ttq_summary(per_seed: dict) -> dict:
    """Over seeds: the median budget and time ratio, and how many seeds reached the target."""
    b = [v["budget"] for v in per_seed.values() if v["budget"] is not None]
    t = [v["time_ratio"] for v in per_seed.values() if v["time_ratio"] is not None]
    return {
        "reached": len(b),
        "seeds": len(per_seed),
        "budget": median(b) if b else None,
        "time_ratio": median(t) if t else None,
        "time_range": (min(t), max(t)) if t else None,
    }


def time_key(meta: dict) -> str:
    """Which time per step a report compares: with one thread on a CPU, the CPU time per step
    (the compute itself, which other work on the machine inflates far less); else the clock."""
    if meta.get("threads") == 1 and str(meta.get("device", "cpu")).startswith("cpu"):
        return "cpu_ms_per_step"
    return "ms_per_step"


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    if n is None or not math.isfinite(n):
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_value(v: Any) -> str:
    """A setting's value as labels, run folders and reports write it (``0.9``, ``1e-05``)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def metric_scale(meta: dict) -> float:
    return 100.0 if meta.get("percent") else 1.0


def fmt_mean_std(stats: dict, scale: float = 1.0, digits: int = 2) -> str:
    m = stats["mean"]
    if not math.isfinite(m):
        return "diverged" if any(v is not None for v in stats["values"]) else "—"
    text = f"{m * scale:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {stats['std'] * scale:.{digits}f}"
    if bad := len(stats["values"]) - stats["n"]:
        text += f" ({bad} diverged)"
    return text
