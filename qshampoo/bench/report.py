"""The report a comparison leaves behind: ``report.md``, ``results.json`` and PNG plots.

Every number in the report comes from the runs' results; the verdict paragraph is assembled
from them by rules written out in :func:`verdict`, with no claim fixed in advance.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable
from pathlib import Path

from . import stability
from .machine import machine_info, versions
from .plots import PLOTS, write_plots
from .summary import fmt_bytes, fmt_mean_std, metric_scale, stats_of, summarize
from .verdict import compare_means, label, verdict

__all__ = [
    "PLOTS",
    "compare_means",
    "fmt_bytes",
    "fmt_mean_std",
    "hparams_table",
    "label",
    "machine_info",
    "render_markdown",
    "results_table",
    "summarize",
    "verdict",
    "versions",
    "write_plots",
    "write_report",
]


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
    return fmt_mean_std(stats_of(ppl), 1.0, 2)


def results_table(meta: dict, summary: dict) -> str:
    scale = metric_scale(meta)
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


def _header_lines(meta: dict, machine: dict, vers: dict) -> list[str]:
    """The command, date, machine and versions a report comes from (after its title)."""
    lines = []
    if meta.get("command"):
        lines += [f"Command: `{meta['command']}`", ""]
    lines += [
        f"Date: {meta.get('date', '')}. Machine: {_machine_line(machine, meta.get('threads'))}; "
        f"device `{meta['device']}`. torch {vers.get('torch')}, qshampoo "
        f"{vers.get('qshampoo', '?')}"
        + (f" (git {vers['qshampoo_git']})" if vers.get("qshampoo_git") else "")
        + ".",
        "",
    ]
    return lines


def _task_sentence(meta: dict) -> str:
    """The task, the run length, the seeds and the learning-rate schedule."""
    return (
        f"Task: {meta.get('task_description', meta['task'])}. {meta['steps']} steps of batch "
        f"{meta['batch_size']}, seeds {', '.join(map(str, meta['seeds']))}; learning rate: "
        f"{100 * meta['warmup']:g}% linear warm-up, cosine decay to {meta['final_lr']:g}× peak."
    )


def _load_lines(meta: dict, machine: dict) -> list[str]:
    """The machine's load at the start and end, when it was measured."""
    load = meta.get("load_average") or {}
    if not (load.get("start") and load.get("end")):
        return []
    return [
        f"Machine load (1-minute load average) at start / end: {load['start'][0]:g} / "
        f"{load['end'][0]:g} on {machine['cores']} cores; other work on the machine slows "
        "every timing below.",
        "",
    ]


def _closing_lines(
    meta: dict, per_seed: str, plots: list[str], overrides_from: str = "`--hp` / `hparams=`"
) -> list[str]:
    """How a report ends, after its hyperparameters: where the learning rates come from, the
    overrides (given through ``overrides_from``), the optimizers skipped, the per-seed table
    ``per_seed`` and the plots."""
    lines = []
    if meta.get("lr_source"):
        lines += [f"Learning rates: {meta['lr_source']}.", ""]
    if meta.get("overrides"):
        lines += [f"Overrides ({overrides_from}): `{json.dumps(meta['overrides'])}`.", ""]
    if meta.get("skipped"):
        lines += [
            "Skipped (not available here): "
            + "; ".join(f"`{k}` ({v})" for k, v in meta["skipped"].items()),
            "",
        ]
    lines += ["## Per seed", "", per_seed, ""]
    lines += ["## Plots", ""]
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    return lines


def render_markdown(meta: dict, summary: dict, machine: dict, vers: dict, plots: list[str]) -> str:
    lines = [f"# qshampoo bench: {meta['task']}", "", *_header_lines(meta, machine, vers)]
    lines += [
        f"{_task_sentence(meta)} Same seed = same initialisation and data order for every "
        f"optimizer. Total time of the comparison: {meta['bench_wall_s'] / 60:.1f} min. Final "
        f"numbers on {meta.get('final_eval_what') or 'the test set'}.",
        "",
    ]
    lines += _load_lines(meta, machine)
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
    lines += _closing_lines(meta, _per_seed_table(meta, summary), plots)
    return "\n".join(lines)


def _per_seed_table(
    meta: dict,
    summary: dict,
    column: str = "optimizer",
    digits: int = 2,
    shown: Callable[[str, dict], str] = lambda name, s: f"`{name}`",
) -> str:
    """The final metric of every entry of ``summary`` at each seed (``—`` where it has none);
    the first column, headed ``column``, shows an entry as ``shown(key, entry)``."""
    scale = metric_scale(meta)
    seeds = meta["seeds"]
    rows = [
        f"| {column} | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for name, s in summary.items():
        by_seed = dict(zip(s["seeds"], s["metric"]["values"], strict=True))
        cells = [
            "—" if by_seed.get(k) is None else f"{by_seed[k] * scale:.{digits}f}" for k in seeds
        ]
        rows.append(f"| {shown(name, s)} | " + " | ".join(cells) + " |")
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
    conclusion = {"verdict": verdict(meta, summary)}
    markdown = render_markdown(meta, summary, machine, vers, plots)
    return _write_files(out, meta, machine, vers, summary, conclusion, results, plots, markdown)


def _write_files(
    out: Path,
    meta: dict,
    machine: dict,
    vers: dict,
    summary: dict,
    conclusion: dict[str, str],
    results: list[dict],
    plots: list[str],
    markdown: str,
) -> dict:
    """Write ``results.json`` and ``report.md`` (``markdown``) into ``out``; return the JSON.
    Its layout (the sweep's ``rerender`` reads it back): meta, machine, versions, summary, the
    ``conclusion`` paragraph (the bench's verdict, the sweep's findings), runs, plots."""
    from .runner import _jsonable, atomic_write_text

    doc = {
        "meta": meta,
        "machine": machine,
        "versions": vers,
        "summary": summary,
        **conclusion,
        "runs": results,
        "plots": plots,
    }
    atomic_write_text(out / "results.json", json.dumps(_jsonable(doc), indent=1))
    atomic_write_text(out / "report.md", markdown)
    return doc
