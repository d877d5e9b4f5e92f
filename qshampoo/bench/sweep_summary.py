"""The statistics of a sweep: per setting and per reference over seeds, and the paired
(same-seed) differences, with the run-to-run noise pooled over the whole sweep."""

from __future__ import annotations

import math

from .summary import stats_of, summarize_runs


def summarize_sweep(meta: dict, results: list[dict]) -> dict[str, dict]:
    """Per setting (by label), then per reference optimizer (by name): statistics over seeds."""
    out: dict[str, dict] = {}
    for s in meta["settings"]:
        runs = [r for r in results if r.get("setting") == s["label"]]
        if runs:
            out[s["label"]] = {
                **summarize_runs(runs),
                "cpu_ms_per_step": _cpu_ms(runs),
                "optimizer": meta["optimizer"],
                "values": s["values"],
                "default": s["default"],
                "reference": False,
            }
    for name in meta["references"]:
        runs = [r for r in results if r.get("setting") is None and r["optimizer"] == name]
        if runs:
            out[name] = {
                **summarize_runs(runs),
                "cpu_ms_per_step": _cpu_ms(runs),
                "optimizer": name,
                "values": {},
                "default": False,
                "reference": True,
            }
    return out


def pooled_noise(table: dict[str, dict[int, float]]) -> tuple[float | None, int]:
    """Run-to-run variance at a fixed seed, pooled over a sweep: ``(sigma2, dof)``.

    ``table`` maps each configuration to ``{seed: final metric}``. The model is additive —
    metric = configuration effect + seed effect + noise — fitted on the configurations that
    finished every seed; ``sigma2`` is the residual variance with ``(C-1)(n-1)`` degrees
    of freedom for C configurations and n seeds (``None`` when that is 0). A seed fixes the
    initialisation and the data order, so its effect is shared by every configuration; what is
    left is how much any change of setting reshuffles the final number, the noise two settings
    must differ by more than."""

    def finite(values):
        return {k for k, v in values.items() if v is not None and math.isfinite(v)}

    # Every seed any configuration has; a configuration without all of them (a diverged run)
    # is left out, unless that leaves fewer than two: then the seeds they all share.
    seeds = sorted(set().union(*map(finite, table.values())) if table else set())
    rows = [[v[k] for k in seeds] for v in table.values() if finite(v) >= set(seeds)]
    if len(rows) < 2 and table:
        seeds = sorted(set.intersection(*map(finite, table.values())))
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


def paired_diff(runs_a: list[dict], runs_b: list[dict], sigma2: float | None = None) -> dict | None:
    """The per-seed differences of the final metric, ``a - b``, over the seeds both have (same
    seed = same initialisation and data order, so the seed-to-seed spread cancels): ``{"mean",
    "noise", "n", "diffs"}``, or ``None`` without a common finite seed. ``noise`` is twice the
    standard error of the mean difference: from the pooled run-to-run variance ``sigma2`` when
    given (see :func:`pooled_noise`), else from these differences alone (``None`` with one)."""
    a = {r["seed"]: r["final"]["metric"] for r in runs_a}
    b = {r["seed"]: r["final"]["metric"] for r in runs_b}
    diffs = [a[k] - b[k] for k in sorted(set(a) & set(b))]
    diffs = [d for d in diffs if math.isfinite(d)]
    if not diffs:
        return None
    n = len(diffs)
    m = sum(diffs) / n
    noise = None
    if sigma2 is not None:
        noise = 2.0 * math.sqrt(2.0 * sigma2 / n)
    elif n > 1:
        var = sum((d - m) ** 2 for d in diffs) / (n - 1)
        noise = 2.0 * math.sqrt(var / n)
    return {"mean": m, "noise": noise, "n": n, "diffs": diffs}


def add_paired(meta: dict, summary: dict, results: list[dict]) -> None:
    """Store in every summary entry its paired differences from the default setting
    (``vs_default``) and, for the settings, from each reference (``vs_references``), with the
    noise pooled over every configuration of the sweep (``meta["noise"]``)."""
    default = next((k for k, s in summary.items() if s["default"]), None)
    refs = [k for k, s in summary.items() if s["reference"]]
    runs = {k: entry_runs(summary, results, k) for k in summary}
    sigma2, dof = pooled_noise(
        {k: {r["seed"]: r["final"]["metric"] for r in rs} for k, rs in runs.items()}
    )
    meta["noise"] = {"sigma": None if sigma2 is None else math.sqrt(sigma2), "dof": dof}
    for k, s in summary.items():
        if not s["reference"]:
            s["vs_references"] = {r: paired_diff(runs[k], runs[r], sigma2) for r in refs}
        s["vs_default"] = (
            None if default is None or k == default else paired_diff(runs[k], runs[default], sigma2)
        )


def entry_runs(summary: dict, results: list[dict], k: str) -> list[dict]:
    """The runs behind the summary entry ``k``: a setting's, or a reference's."""
    if summary[k]["reference"]:
        return [r for r in results if r.get("setting") is None and r["optimizer"] == k]
    return [r for r in results if r.get("setting") == k]


def _cpu_ms(runs: list[dict]) -> dict:
    return stats_of([r["time"].get("cpu_ms_per_step", float("nan")) for r in runs])


def time_key(meta: dict) -> tuple[str, str]:
    """Which time per step the findings and plots compare, and its name. With one thread on a
    CPU, the process's CPU time per step: it is the compute itself, and other work on the
    machine inflates it far less than the wall-clock time (a run that waits for a core keeps
    its CPU time). Otherwise the wall-clock time."""
    if meta.get("threads") == 1 and str(meta.get("device", "cpu")).startswith("cpu"):
        return "cpu_ms_per_step", "CPU ms/step"
    return "ms_per_step", "ms/step"
