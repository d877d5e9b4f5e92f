"""The report of a sweep: ``report.md`` and ``results.json``, with the statistics of
:mod:`~qshampoo.bench.sweep_summary` and the plots of :mod:`~qshampoo.bench.sweep_plots`. The
findings paragraph is assembled from the numbers by fixed rules, like the bench verdict.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from .machine import machine_info, versions
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
from .summary import fmt_bytes, fmt_mean_std, fmt_value, metric_scale
from .sweep_plots import write_plots
from .sweep_summary import add_paired, summarize_sweep, time_key
from .verdict import label, stability_sentence

# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------


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
