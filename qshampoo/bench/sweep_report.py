"""The report of a sweep: ``report.md``, ``results.json`` and PNG plots.

Plots: ``curves.png`` (learning curves, one line per setting, references dashed),
``quality.png`` (final quality ± std against the setting, references as bands), ``cost.png``
(optimizer-state bytes and ms/step against the setting), ``pareto.png`` (quality against memory
and against time, the non-dominated points joined). The findings paragraph is assembled from the
numbers by fixed rules, like the bench verdict.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from .machine import machine_info, versions
from .plots import _mean_curve, _save, _smooth, _state_bars
from .report import (
    _closing_lines,
    _header_lines,
    _load_lines,
    _per_seed_table,
    _second_cell,
    _second_column,
    _task_sentence,
    _write_files,
)
from .summary import (
    fmt_bytes,
    fmt_mean_std,
    fmt_value,
    metric_scale,
    stats_of,
    summarize_runs,
)
from .verdict import label, stability_sentence

SWEEP_PLOTS = {
    "curves": "curves.png",
    "quality": "quality.png",
    "cost": "cost.png",
    "pareto": "pareto.png",
}


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
    runs = {k: _runs_of(summary, results, k) for k in summary}
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


def _runs_of(summary: dict, results: list[dict], k: str) -> list[dict]:
    if summary[k]["reference"]:
        return [r for r in results if r.get("setting") is None and r["optimizer"] == k]
    return [r for r in results if r.get("setting") == k]


def _paired_phrase(meta: dict, p: dict, other: str | None = None) -> str:
    """``"0.21 points worse than AdamW (±0.05 points, better on 0 of 3 seeds: beyond seed
    noise)"``; without ``other``, ``"0.21 points worse (±0.05 points, better on 0 of 3
    seeds)"``."""
    scale = metric_scale(meta)
    unit = " points" if meta.get("percent") else ""
    better = _better(meta, p["mean"], 0.0)
    text = f"{abs(p['mean']) * scale:.{_digits(meta)}f}{unit} {'better' if better else 'worse'}"
    if other:
        text += f" than {other}"
    if p["noise"] is None:
        return text + " (one seed)"
    wins = sum(1 for d in p["diffs"] if _better(meta, d, 0.0))
    text += f" (±{p['noise'] * scale:.{_digits(meta)}f}{unit}, better on {wins} of {p['n']} seeds"
    if other:
        beyond = abs(p["mean"]) > p["noise"]
        text += f": {'beyond' if beyond else 'within'} seed noise"
    return text + ")"


def _digits(meta: dict) -> int:
    """Decimals of the metric: percentages to 0.01 points, losses to 1e-4 (differences
    between settings of a language model's loss are often a few thousandths)."""
    return 2 if meta.get("percent") else 4


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


def _better(meta: dict, a: float, b: float) -> bool:
    return a > b if meta["higher_is_better"] else a < b


def _finite(summary: dict) -> dict:
    return {k: s for k, s in summary.items() if math.isfinite(s["metric"]["mean"])}


def findings(meta: dict, summary: dict) -> str:
    """A paragraph from the numbers: the best setting, each setting against the default, the
    best against the references, the memory and time range, stability events."""
    points = {k: s for k, s in summary.items() if not s["reference"]}
    refs = {k: s for k, s in summary.items() if s["reference"]}
    fin = _finite(points)
    scale = metric_scale(meta)
    unit = "%" if meta.get("percent") else ""
    keys = " and ".join(a["key"] for a in meta["grid"])
    parts = []
    if not fin:
        return "No setting finished with a finite result."
    best = max(
        fin, key=lambda k: (1 if meta["higher_is_better"] else -1) * fin[k]["metric"]["mean"]
    )
    n = len(meta["seeds"])
    parts.append(
        f"Sweeping {keys} of {label(meta['optimizer'])} over {len(points)} settings "
        f"({meta['steps']} steps, {n} seed{'s' if n > 1 else ''} each), the best mean final "
        f"{meta['metric_name']} was at {best} "
        f"({fin[best]['metric']['mean'] * scale:.{_digits(meta)}f}{unit})."
    )
    default = next((k for k, s in points.items() if s["default"]), None)
    if default is None:
        parts.append("The current default is not among the settings swept.")
    elif default in fin:
        groups: dict[str, list[str]] = {"better": [], "worse": [], "within": []}
        for k in fin:
            p = points[k].get("vs_default")
            if k == default or p is None:
                continue
            beyond = p["noise"] is not None and abs(p["mean"]) > p["noise"]
            where = ("better" if _better(meta, p["mean"], 0.0) else "worse") if beyond else "within"
            groups[where].append(f"{k}: {_paired_phrase(meta, p)}")
        items = [
            f"{what} beyond seed noise: " + "; ".join(groups[what])
            for what in ("better", "worse")
            if groups[what]
        ]
        if groups["within"]:
            items.append("within seed noise: " + "; ".join(groups["within"]))
        parts.append(
            f"Against the default ({default}), seed by seed: " + " — ".join(items) + "."
            if items
            else f"The default ({default}) is the only setting that finished."
        )
    for name in _finite(refs):
        texts = []
        entries = [(best, f"the best setting ({best})")]
        if default is not None and default != best:
            entries.append((default, f"the default ({default})"))
        for k, what in entries:
            p = points[k].get("vs_references", {}).get(name)
            if p is not None:
                texts.append(f"{what} was {_paired_phrase(meta, p, label(name))}")
        if texts:
            parts.append(f"Against {label(name)}, seed by seed: " + "; ".join(texts) + ".")
    pre = {k: s["state_bytes"]["preconditioners"] for k, s in points.items()}
    lo, hi = min(pre, key=pre.get), max(pre, key=pre.get)
    if pre[lo] != pre[hi]:
        parts.append(
            f"Preconditioner state ranged from {fmt_bytes(pre[lo])} ({lo}) to "
            f"{fmt_bytes(pre[hi])} ({hi})."
        )
    elif pre[lo]:
        parts.append(f"Preconditioner state was {fmt_bytes(pre[lo])} at every setting.")
    tkey, tname = time_key(meta)
    ms = {k: s[tkey]["mean"] for k, s in points.items()}
    lo, hi = min(ms, key=ms.get), max(ms, key=ms.get)
    parts.append(
        f"{tname} ranged from {ms[lo]:.1f} ({lo}) to {ms[hi]:.1f} ({hi})"
        + (
            "; references: "
            + ", ".join(f"{label(k)} {s[tkey]['mean']:.1f}" for k, s in refs.items())
            if refs
            else ""
        )
        + "."
    )
    # Settings and references by their keys (a setting's label, a reference's name).
    parts.append(stability_sentence(summary, name=str))
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _delta_cell(meta: dict, s: dict) -> str:
    if s["default"]:
        return "(default)"
    p = s.get("vs_default")
    if p is None:
        return "—"
    scale = metric_scale(meta)
    text = f"{p['mean'] * scale:+.{_digits(meta)}f}"
    if p["noise"] is None:
        return text
    text += f" (±{p['noise'] * scale:.{_digits(meta)}f})"
    return f"**{text}**" if abs(p["mean"]) > p["noise"] else text


def _noise_text(meta: dict) -> str:
    noise = meta.get("noise") or {}
    if noise.get("sigma") is None:
        return ": not estimable with one seed"
    scale = metric_scale(meta)
    unit = " points" if meta.get("percent") else ""
    return (
        f": σ = {noise['sigma'] * scale:.{_digits(meta)}f}{unit} per run, "
        f"{noise['dof']} degrees of freedom"
    )


def _stability_cell(st: dict) -> str:
    nonfinite = st["nonfinite_losses"] + st["optimizer_nonfinite_steps"]
    return f"{nonfinite} / {st['loss_spikes']} / {st['root_failures'] + st['cholesky_failures']}"


def results_table(meta: dict, summary: dict) -> str:
    scale = metric_scale(meta)
    metric = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    second = _second_column(meta)
    head = [
        "setting",
        metric,
        *([second] if second else []),
        "Δ vs default, paired (±2 s.e.)",
        "preconditioner state",
        "total optimizer state",
        "ms/step",
        "CPU ms/step",
        "wall time (s)",
        "non-finite / spikes / failures",
        "4-bit quant. error (last eval)",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary.items():
        q = s["quant_error"]["last"]
        shown = f"`{name}` (reference)" if s["reference"] else name
        if s["default"]:
            shown += " *(default)*"
        rows.append(
            "| "
            + " | ".join(
                [
                    shown,
                    fmt_mean_std(s["metric"], scale, _digits(meta)),
                    *([_second_cell(meta, s)] if second else []),
                    _delta_cell(meta, s),
                    fmt_bytes(s["state_bytes"]["preconditioners"]),
                    fmt_bytes(s["state_bytes"]["total"]),
                    fmt_mean_std(s["ms_per_step"], 1.0, 1),
                    fmt_mean_std(s["cpu_ms_per_step"], 1.0, 1),
                    fmt_mean_std(s["wall_s"], 1.0, 1),
                    _stability_cell(s["stability"]),
                    "—" if q is None else f"{q:.3f}",
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def _hp_text(hp: dict) -> str:
    def one(v):
        if isinstance(v, (list, tuple)):
            return "(" + ", ".join(one(x) for x in v) + ")"
        return fmt_value(v)

    return ", ".join(f"{k}={one(v)}" for k, v in sorted(hp.items()))


def _grid_text(meta: dict) -> str:
    out = []
    for a in meta["grid"]:
        vals = []
        for v in a["values"]:
            rel = a["relative"].get(fmt_value(v))
            vals.append(f"{fmt_value(v)} ({rel})" if rel else fmt_value(v))
        out.append(f"`{a['key']}` ∈ {{{', '.join(vals)}}}")
    return " × ".join(out)


def render_markdown(meta: dict, summary: dict, machine: dict, vers: dict, plots: list[str]) -> str:
    keys = ", ".join(a["key"] for a in meta["grid"])
    lines = [
        f"# qshampoo sweep: {meta['task']}, `{meta['optimizer']}` over {keys}",
        "",
        *_header_lines(meta, machine, vers),
    ]
    lines += [
        f"{_task_sentence(meta)} Final numbers on "
        f"{meta.get('final_eval_what') or 'the test set'}. Total time of the sweep: "
        f"{meta['sweep_wall_s'] / 60:.1f} min.",
        "",
        f"Grid: {_grid_text(meta)} for `{meta['optimizer']}`; references: "
        + (", ".join(f"`{r}`" for r in meta["references"]) or "none")
        + " at their usual settings. Same seed = same initialisation and data order everywhere.",
        "",
    ]
    lines += _load_lines(meta, machine)
    if meta.get("validation"):
        lines += ["**Evaluated on a validation split held out of the training data.**", ""]
    lines += ["## Results", "", results_table(meta, summary), ""]
    lines += [
        "*Δ vs default, paired*: the mean over seeds of (this − the setting equal to the current "
        "defaults, same seed), in the metric's units, ± twice its standard error; **bold** when "
        "the difference exceeds that (beyond seed noise). A seed fixes the initialisation and "
        "the data order for every setting, so the seed-to-seed spread (the ± of the metric "
        "column) cancels; what remains is how much any change of setting reshuffles the final "
        "number at a fixed seed, estimated once for the whole sweep (residual of an additive "
        "setting + seed model over every row" + _noise_text(meta) + "). "
        "*CPU ms/step*: the run's CPU time per training step (all its threads); with one "
        "thread it is the compute itself, which other work on the machine inflates far less "
        "than the wall-clock *ms/step*. *Failures*: root plus Cholesky failures. Other columns "
        "as in `qshampoo bench` (docs/harness.md).",
        "",
    ]
    reused = sorted({s for s in meta.get("reused_runs", [])})
    if reused:
        lines += [
            f"{len(reused)} runs with identical settings (same fingerprint) were taken from "
            f"earlier folders ({', '.join(f'`{d}`' for d in meta.get('reuse', []))}) instead of "
            "being trained again; their timings are from when they ran.",
            "",
        ]
    lines += ["## Findings", "", findings(meta, summary), ""]
    lines += ["## Hyperparameters", ""]
    lines += [
        f"- `{meta['optimizer']}` (every setting, before the grid's values): "
        f"{_hp_text(meta['base_hparams'])}"
    ]
    for name, s in summary.items():
        if s["reference"]:
            lines += [f"- `{name}` (reference): {_hp_text(s['hparams'])}"]
    lines += [""]
    per_seed = _per_seed_table(
        meta,
        summary,
        "setting",
        _digits(meta),
        lambda name, s: f"`{name}`" if s["reference"] else name,
    )
    lines += _closing_lines(meta, per_seed, plots, overrides_from="`--hp`")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


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
        return _runs_of(summary, results, k)

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


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def write_report(
    out: Path,
    meta: dict,
    results: list[dict],
    machine: dict | None = None,
    vers: dict | None = None,
) -> dict:
    """Write ``report.md``, ``results.json`` and the plots into ``out``; return the JSON.
    ``machine`` and ``vers`` default to this machine's (given when re-rendering)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    meta.setdefault("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    meta["reused_runs"] = [r["reused_from"] for r in results if r.get("reused_from")]
    summary = summarize_sweep(meta, results)
    add_paired(meta, summary, results)
    machine = machine or machine_info()
    vers = vers or versions()
    plots = write_plots(out, meta, results, summary)
    conclusion = {"findings": findings(meta, summary)}
    markdown = render_markdown(meta, summary, machine, vers, plots)
    return _write_files(out, meta, machine, vers, summary, conclusion, results, plots, markdown)


def rerender(out: str | Path) -> dict:
    """Write the report of a finished sweep again from its ``results.json`` (after a change to
    the report code), keeping its command, date, machine, versions and timings."""
    out = Path(out)
    doc = json.loads((out / "results.json").read_text())
    return write_report(out, doc["meta"], doc["runs"], doc["machine"], doc["versions"])
