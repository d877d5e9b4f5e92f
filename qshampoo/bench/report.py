"""The report a comparison or a sweep leaves behind: ``report.md``, ``report.html`` (one
self-contained page: plots embedded, no network), ``results.json`` and the PNG plots.

A comparison's report starts with one recommendation sentence, derived from the measurements by
the rules in ``docs/harness.md`` (and the report's appendix), then four KPI tiles relative to the
baseline (AdamW) with paired 95 % intervals, then one KPI figure; everything else is in the
appendix. Its text comes from :mod:`qshampoo.bench.text`, in English or Japanese. A report is a
list of blocks that :func:`to_markdown` and :func:`to_html` both render, so the two never differ.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import re
from pathlib import Path

from . import optimizers as optim_mod
from .machine import machine_info, versions
from .plots import bench_plots, sweep_plots
from .recorder import RESULT, write_json
from .stability import SPIKE_MADS, SPIKE_RISE, SPIKE_WINDOW
from .summary import (
    by_seed,
    events,
    fmt_bytes,
    fmt_mean_std,
    fmt_value,
    metric_scale,
    paired,
    paired_diff,
    pooled_noise,
    roles,
    stats_of,
    summarize_runs,
    time_key,
    time_to_quality,
    ttq_summary,
    verdict_of,
)
from .text import t

# --------------------------------------------------------------------------------------------
# Blocks: ("h", level, text), ("p", text), ("table", head, rows), ("img", file, alt),
# ("tiles", [{"title", "note", "rows": [(label, value, detail, strong)]}])
# --------------------------------------------------------------------------------------------


def to_markdown(blocks: list[tuple]) -> str:
    lines = []
    for b in blocks:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "img":
            lines += [f"![{b[2]}]({b[1]})", ""]
        elif b[0] == "table":
            lines += [_md_table(b[1], b[2]), ""]
        elif b[0] == "tiles":  # one row per tile, one column per optimizer
            tiles = b[1]
            names = [r[0] for r in tiles[0]["rows"]]
            rows = [
                [f"**{tl['title']}** ({tl['note']})"]
                + [
                    (f"**{v}**" if strong else v) + (f"; {d}" if d else "")
                    for _, v, d, strong in tl["rows"]
                ]
                for tl in tiles
            ]
            lines += [_md_table([b[2], *names], rows), ""]
    return "\n".join(lines)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _inline(text: str) -> str:
    """Markdown's bold, italics and code in ``text`` as HTML."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


CSS = """
body{font-family:system-ui,'Segoe UI',Helvetica,Arial,'IPAGothic','Noto Sans CJK JP',sans-serif;
max-width:1120px;margin:24px auto;padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ddd}
.decision{font-size:1.2em;background:#f3f6fa;border-left:6px solid #1b6ca8;padding:12px 16px}
.tiles{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin:16px 0}
.tile{border:1px solid #ccd;border-radius:8px;padding:10px 12px}
.tile h3{margin:0;font-size:1em}.note{color:#666;font-size:.8em;margin-bottom:6px}
.row{margin:4px 0;font-size:.9em}.row .v{font-size:1.1em;font-weight:600}
.row.strong .v{font-size:1.5em;color:#1b6ca8}.row .d{color:#555;display:block;font-size:.85em}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}img{max-width:100%}
"""


def to_html(blocks: list[tuple], out: Path, title: str, lang: str) -> str:
    body = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            cls = ' class="decision"' if b[1].startswith("**") and not body[1:] else ""
            body.append(f"<p{cls}>{_inline(b[1])}</p>")
        elif b[0] == "img":
            data = base64.b64encode((out / b[1]).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">')
        elif b[0] == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2]
            )
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b[0] == "tiles":
            tiles = []
            for tl in b[1]:
                rows = "".join(
                    f'<div class="row{" strong" if strong else ""}">{_inline(name)} '
                    f'<span class="v">{_inline(v)}</span><span class="d">{_inline(d)}</span></div>'
                    for name, v, d, strong in tl["rows"]
                )
                tiles.append(
                    f'<div class="tile"><h3>{_inline(tl["title"])}</h3>'
                    f'<div class="note">{_inline(tl["note"])}</div>{rows}</div>'
                )
            body.append(f'<div class="tiles">{"".join(tiles)}</div>')
    return (
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# The decision: KPIs relative to the baseline, and the recommendation
# --------------------------------------------------------------------------------------------


def kpis(meta: dict, summary: dict, results: list[dict]) -> dict:
    """Per optimizer but the baseline: paired comparisons with the baseline (and 32-bit
    Shampoo), the time to quality, and every optimizer's stability events."""
    names = list(summary)
    k = roles(names)
    b, ref, hib = k["baseline"], k["reference"], meta["higher_is_better"]
    tkey = time_key(meta)[0]  # CPU time per step with one thread on a CPU: the compute itself
    runs = {n: [r for r in results if r["optimizer"] == n and "budget" not in r] for n in names}
    get = {
        "metric": lambda r: r["final"]["metric"],
        "peak": lambda r: r["memory"].get("optimizer_peak_bytes"),
        "ms": lambda r: r["time"].get(tkey) or r["time"]["ms_per_step"],
        "grad": lambda r: r["stability"].get("grad_norm_ratio"),
    }

    def pair(a, other, what, ratio=False):
        if other is None:
            return None
        return paired(by_seed(runs[a], get[what]), by_seed(runs[other], get[what]), ratio)

    rows = {}
    for n in names:
        if n == b:
            continue
        row = {
            "quality": pair(n, b, "metric"),
            "memory": pair(n, b, "peak", True),
            "time": pair(n, b, "ms", True),
            "grad": pair(n, b, "grad", True),
            "ttq": None,
        }
        if b and meta.get("budgets"):
            clock = "cpu_s" if tkey == "cpu_ms_per_step" else "train_s"
            row["ttq"] = ttq_summary(time_to_quality(results, n, b, hib, clock))
        if ref and n != ref:
            row["vs_reference"] = pair(n, ref, "metric")
            row["memory_vs_reference"] = pair(ref, n, "peak", True)
            row["time_vs_reference"] = pair(n, ref, "ms", True)
        rows[n] = row
    return {**k, "rows": rows, "events": {n: events(summary[n]["stability"]) for n in names}}


def _signed(x: float, meta: dict) -> str:
    return f"{x * metric_scale(meta):+.{2 if meta.get('percent') else 4}f}"


def _ci(p: dict, meta: dict, lang: str, ratio: bool = False) -> str:
    """A 95 % interval as text; for a metric, oriented so that positive is better."""
    if p["lo"] is None:
        return t("ci1", lang)
    if ratio:
        return t("ci", lang, lo=f"{p['lo']:.2f}", hi=f"{p['hi']:.2f}")
    s = 1 if meta["higher_is_better"] else -1
    lo, hi = sorted((s * p["lo"], s * p["hi"]))
    return t("ci", lang, lo=_signed(lo, meta), hi=_signed(hi, meta))


def _quality_phrase(p: dict, other: str, meta: dict, lang: str) -> str:
    """``"1.55 points better than AdamW [95 % CI +0.90, +2.20]"``."""
    gain = p["mean"] if meta["higher_is_better"] else -p["mean"]
    digits = 2 if meta.get("percent") else 4
    return t(
        "ev.diff",
        lang,
        diff=f"{abs(gain) * metric_scale(meta):.{digits}f}",
        unit=t("unit.points", lang) if meta.get("percent") else "",
        dir=t("dir.better" if gain >= 0 else "dir.worse", lang),
        other=other,
        ci=_ci(p, meta, lang),
    )


def _events_text(ev: dict[str, int], lang: str) -> str:
    return ", ".join(t(f"event.{k}", lang, n=v) for k, v in ev.items() if v)


def _ttq_text(ttq: dict, fields: dict, lang: str, key: str) -> str:
    """Time to quality: the median budget and time ratio when every seed reached the target."""
    if ttq["reached"] == ttq["seeds"]:
        return t(key, lang, budget=100 * ttq["budget"], time=ttq["time_ratio"], **fields)
    if ttq["reached"]:
        return t(key + "_some", lang, n=ttq["reached"], seeds=ttq["seeds"], **fields)
    return t(key + "_no", lang, **fields)


def recommendation(meta: dict, summary: dict, k: dict, lang: str = "en") -> str:
    """The one sentence at the top of the report, by the rules of ``docs/harness.md``."""
    c, b, ref = k["candidate"], k["baseline"], k["reference"]
    if c is None or b is None:
        return ""
    row, ev, hib = k["rows"][c], k["events"][c], meta["higher_is_better"]
    label = {n: s["label"] for n, s in summary.items()}
    fields = {"baseline": label[b], "metric": meta["metric_name"], "reference": label.get(ref)}
    unstable = ev["nonfinite"] or ev["failures"] or ev["diverged"]
    unstable = unstable or ev["spikes"] > k["events"][b]["spikes"]
    q = verdict_of(row["quality"], hib)
    qr = verdict_of(row.get("vs_reference"), hib) if ref and c != ref else None
    ttq = row["ttq"]
    if unstable or q == "worse":
        verdict = "rec.no"
    elif q == "unknown":
        verdict = "rec.undecided"
    elif qr in ("worse", "same") and (row.get("memory_vs_reference") or {}).get("mean", 9) < 1.1:
        verdict = "rec.prefer"  # 32-bit Shampoo does as well, and 4 bits save no peak memory
    elif q == "better":
        slower = (row.get("time_vs_reference") or {}).get("mean", 0) > 1.05
        verdict = "rec.adopt_memory" if qr == "worse" or (qr and slower) else "rec.adopt"
    elif ttq and ttq["reached"] == ttq["seeds"] and (ttq["time_range"] or (9, 9))[1] < 1:
        verdict = "rec.adopt_faster"
    else:
        verdict = "rec.no_gain"
    evidence = []
    if qr in ("same", "unknown") and row["vs_reference"] and qr == "same":
        evidence.append(t("ev.same_as", lang, metric=meta["metric_name"], other=label[ref]))
    elif qr:
        evidence.append(_quality_phrase(row["vs_reference"], label[ref], meta, lang))
    if row["quality"]:
        evidence.append(_quality_phrase(row["quality"], label[b], meta, lang))
    mref = row.get("memory_vs_reference")
    if mref and mref["mean"] >= 1.1:
        evidence.append(t("ev.memory_vs", lang, ratio=mref["mean"], other=label[ref]))
    elif mref and mref["mean"] > 1 / 1.1:
        peak = {n: fmt_bytes(summary[n]["optimizer_peak_bytes"]["mean"]) for n in (c, ref)}
        evidence.append(t("ev.memory_same", lang, other=label[ref], mine=peak[c], theirs=peak[ref]))
    elif row["memory"]:
        evidence.append(t("ev.memory", lang, ratio=row["memory"]["mean"], **fields))
    if row["time"]:
        evidence.append(t("ev.time", lang, ratio=row["time"]["mean"], **fields))
    if ttq:
        evidence.append(_ttq_text(ttq, fields, lang, "ev.ttq"))
    n_seeds, steps = len(summary[c]["seeds"]), meta["steps"]
    if any(ev.values()):
        evidence.append(t("ev.unstable", lang, events=_events_text(ev, lang)))
    else:
        evidence.append(t("ev.stable", lang, seeds=n_seeds, steps=steps))
    sep = "、" if lang == "ja" else ", "
    v = t(verdict, lang, **fields)
    return t(
        "rec.sentence", lang, verdict=f"**{v}**", candidate=label[c], evidence=sep.join(evidence)
    )


def tiles(meta: dict, summary: dict, k: dict, lang: str) -> list[dict]:
    """The four KPI tiles: one row ``(label, value, detail, strong)`` per optimizer but the
    baseline, the candidate first (``strong``)."""
    label = {n: s["label"] for n, s in summary.items()}
    fields = {"baseline": label.get(k["baseline"], "?"), "metric": meta["metric_name"]}
    scale, unit = metric_scale(meta), ("%" if meta.get("percent") else "")
    points = t("unit.points", lang) if meta.get("percent") else ""
    out: dict[str, list] = {"quality": [], "memory": [], "time": [], "stability": []}
    for n in sorted(k["rows"], key=lambda n: n != k["candidate"]):
        row, s, strong = k["rows"][n], summary[n], n == k["candidate"]
        q, m, tm, g = row["quality"], row["memory"], row["time"], row["grad"]
        gain = q and (q["mean"] if meta["higher_is_better"] else -q["mean"])
        value = "—" if q is None else _signed(gain, meta) + points
        detail = f"{s['metric']['mean'] * scale:.2f}{unit} " + (q and _ci(q, meta, lang) or "")
        out["quality"].append((label[n], value, detail, strong))
        detail = fmt_bytes(s["optimizer_peak_bytes"]["mean"])
        detail += " " + _ci(m, meta, lang, True) if m else ""
        out["memory"].append((label[n], m and f"{m['mean']:.2f}×" or "—", detail, strong))
        detail = _ci(tm, meta, lang, True) if tm else ""
        if row["ttq"]:
            detail += "; " + _ttq_text(row["ttq"], fields, lang, "tile.ttq")
        out["time"].append((label[n], tm and f"{tm['mean']:.2f}×" or "—", detail, strong))
        ev = k["events"][n]
        ratio = "—" if g is None else f"{g['mean']:.2f}× " + _ci(g, meta, lang, True)
        detail = t("tile.events", lang, events=_events_text(ev, lang) or "0", ratio=ratio)
        out["stability"].append(
            (label[n], t("plot.events", lang, n=sum(ev.values())), detail, strong)
        )
    cpu = "_cpu" if time_key(meta)[0] == "cpu_ms_per_step" else ""
    titles = {
        "quality": (meta["metric_name"], "tile.quality_note"),
        "memory": (t("tile.memory", lang), "tile.memory_note"),
        "time": (t("tile.time", lang), "tile.time_note" + cpu),
        "stability": (t("tile.stability", lang), "tile.stability_note"),
    }
    return [
        {"title": titles[key][0], "note": t(titles[key][1], lang, **fields), "rows": rows}
        for key, rows in out.items()
    ]


# --------------------------------------------------------------------------------------------
# The appendix
# --------------------------------------------------------------------------------------------


def _mib(stats: dict | None) -> str:
    if not stats or not math.isfinite(stats["mean"]):
        return "—"
    return f"{stats['mean'] / 2**20:.2f}"


def _second(meta: dict, s: dict, lang: str) -> tuple[str, str] | None:
    """The column after the metric: the loss, or perplexity when the metric is the loss."""
    if not meta.get("metric_is_loss"):
        return t("col.loss", lang), fmt_mean_std(s["loss"], 1.0, 4)
    if meta.get("perplexity"):
        ppl = [
            math.exp(v) if v is not None and math.isfinite(v) else v for v in s["loss"]["values"]
        ]
        return t("col.ppl", lang), fmt_mean_std(stats_of(ppl), 1.0, 2)
    return None


def results_table(meta: dict, summary: dict, k: dict, lang: str = "en") -> tuple[list, list]:
    """One row per optimizer, one unit per column."""
    scale = metric_scale(meta)
    fields = {
        "baseline": summary[k["baseline"]]["label"] if k["baseline"] else "—",
        "metric": meta["metric_name"],
    }
    metric = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    first = next(iter(summary.values()))
    second = _second(meta, first, lang)
    head = [
        t("col.optimizer", lang),
        metric,
        *([second[0]] if second else []),
        t("col.peak", lang),
        t("col.state", lang),
        t("col.rss", lang),
        t("col.ms", lang),
        t("col.train_s", lang),
    ]
    if meta.get("budgets"):
        head.append(t("col.ttq", lang, **fields))
    head += [
        t("col.spikes", lang),
        t("col.nonfinite", lang),
        t("col.failures", lang),
        t("col.gradratio", lang),
        t("col.qerr", lang),
    ]
    rows = []
    for n, s in summary.items():
        ev, q = events(s["stability"]), s["quant_error"]
        row = [
            s["label"],
            fmt_mean_std(s["metric"], scale),
            *([_second(meta, s, lang)[1]] if second else []),
            _mib(s["optimizer_peak_bytes"]),
            f"{s['state_bytes']['total'] / 2**20:.2f}",
            _mib(s["peak_rss_bytes"]),
            fmt_mean_std(s["ms_per_step"], 1.0, 1),
            fmt_mean_std(s["train_s"], 1.0, 1),
        ]
        if meta.get("budgets"):
            ttq = (k["rows"].get(n) or {}).get("ttq")
            row.append(
                "100"
                if n == k["baseline"]
                else "—"
                if not ttq or not ttq["reached"]
                else f"{100 * ttq['budget']:.0f} ({ttq['reached']}/{ttq['seeds']})"
            )
        row += [
            ev["spikes"],
            ev["nonfinite"],
            ev["failures"],
            fmt_mean_std(s["stability"]["grad_norm_ratio"], 1.0, 1),
            "—" if q["first"] is None else f"{q['first']:.3f} → {q['last']:.3f}",
        ]
        rows.append(row)
    return head, rows


def per_seed_table(meta: dict, summary: dict, shown, digits: int = 2, lang: str = "en"):
    """The final metric of every entry at each seed (``—`` where it has none)."""
    scale, seeds = metric_scale(meta), meta["seeds"]
    rows = []
    for name, s in summary.items():
        by = dict(zip(s["seeds"], s["metric"]["values"], strict=True))
        rows.append(
            [shown(name, s)]
            + ["—" if by.get(k) is None else f"{by[k] * scale:.{digits}f}" for k in seeds]
        )
    return [t("col.optimizer", lang)] + [t("col.seed", lang, seed=k) for k in seeds], rows


def hparams_table(summary: dict, lr_tuned: dict | None = None) -> tuple[list, list]:
    keys = ["lr", "weight_decay", "betas", "momentum", "stat_interval", "root_interval"]
    present = [k for k in keys if any(k in s["hparams"] for s in summary.values())]
    cols = present + sorted(
        {k for s in summary.values() for k in s["hparams"]} - set(keys) - {"base"}
    )
    rows = []
    for name, s in summary.items():
        vals = []
        for k in cols:
            v = s["hparams"].get(k, "")
            text = "(" + ", ".join(map(str, v)) + ")" if isinstance(v, list) else fmt_value(v)
            if k == "lr" and lr_tuned is not None and lr_tuned.get(name) is False:
                text += " (family default, not tuned)"
            vals.append(text)
        rows.append([f"`{name}`", *vals])
    return ["optimizer", *cols], rows


def _machine_text(meta: dict, machine: dict, vers: dict) -> str:
    threads = meta.get("threads") or machine["torch_threads"]
    text = f"{machine['cpu']}, {machine['cores']} cores ({threads} torch threads per run)"
    if machine.get("memory_bytes"):
        text += f", {fmt_bytes(machine['memory_bytes'])} RAM"
    for g in machine.get("gpus", []):
        text += f", GPU {g['name']} ({fmt_bytes(g['memory_bytes'])})"
    return text + f"; torch {vers.get('torch')}"


def _run_lines(meta: dict, machine: dict, vers: dict) -> list[str]:
    """The command, date, machine, versions, load, task and schedule a report comes from."""
    lines = []
    if meta.get("command"):
        lines.append(f"Command: `{meta['command']}`")
    git = f" (git {vers['qshampoo_git']})" if vers.get("qshampoo_git") else ""
    lines.append(
        f"Date: {meta.get('date', '')}. Machine: {_machine_text(meta, machine, vers)}, "
        f"qshampoo {vers.get('qshampoo', '?')}{git}; device `{meta.get('device', 'cpu')}`."
    )
    if meta.get("task_description"):
        lines.append(
            f"Task: {meta['task_description']}. {meta['steps']} steps of batch "
            f"{meta.get('batch_size')}, seeds {', '.join(map(str, meta['seeds']))}; learning "
            f"rate: {100 * meta['warmup']:g}% linear warm-up, cosine decay to "
            f"{meta['final_lr']:g}× peak. "
            f"Final numbers on {meta.get('final_eval_what') or 'the test set'}."
        )
    load = meta.get("load_average") or {}
    if load.get("start") and load.get("end"):
        lines.append(
            f"Machine load (1-minute load average) at start / end: {load['start'][0]:g} / "
            f"{load['end'][0]:g} on {machine['cores']} cores; other work on the machine "
            "slows every timing."
        )
    if meta.get("validation"):
        lines.append("**Evaluated on a validation split held out of the training data.**")
    if meta.get("overrides"):
        lines.append(f"Overrides (`--hp`): `{json.dumps(meta['overrides'])}`.")
    return lines


def bench_blocks(meta, summary, k, machine, vers, plots, lang) -> list[tuple]:
    label = {n: s["label"] for n, s in summary.items()}
    fields = {"baseline": label.get(k["baseline"], "—"), "metric": meta["metric_name"]}
    blocks = [("h", 1, t("title", lang, task=meta["task"]))]
    sentence = recommendation(meta, summary, k, lang)
    if sentence:
        blocks.append(("p", sentence))
    if k["rows"] and k["baseline"]:
        blocks.append(("tiles", tiles(meta, summary, k, lang), t("col.kpi", lang, **fields)))
    if "kpi.png" in plots:
        blocks.append(("img", "kpi.png", t("kpi_alt", lang)))
    blocks.append(
        (
            "p",
            t(
                "run",
                lang,
                task=meta["task"],
                seeds=len(meta["seeds"]),
                steps=meta["steps"],
                machine=_machine_text(meta, machine, vers),
                minutes=meta.get("wall_s", 0) / 60,
            ),
        )
    )
    blocks.append(("h", 2, t("appendix", lang)))
    blocks += [("h", 3, t("h.results", lang)), ("table", *results_table(meta, summary, k, lang))]
    blocks += [
        ("h", 3, t("h.rules", lang)),
        ("p", t("rules", lang, candidate=label.get(k["candidate"], "—"), **fields)),
    ]
    blocks += [
        ("h", 3, t("h.per_seed", lang, metric=meta["metric_name"])),
        ("table", *per_seed_table(meta, summary, lambda n, s: s["label"], lang=lang)),
    ]
    blocks += [("h", 3, t("h.plots", lang))]
    blocks += [("img", p, p) for p in plots if p != "kpi.png"]
    blocks += [("h", 3, t("h.glossary", lang))]
    budgets = ", ".join(f"{100 * f:g}" for f in meta.get("budgets") or []) or "—"
    blocks += [
        ("p", t("gl.peak", lang)),
        ("p", t("gl.rss", lang)),
        ("p", t("gl.time", lang, budgets=budgets, **fields)),
        ("p", t("gl.spike", lang, window=SPIKE_WINDOW, mads=SPIKE_MADS, rise=100 * SPIKE_RISE)),
        ("p", t("gl.quant", lang)),
        ("p", t("gl.names", lang)),
    ]
    blocks += [
        ("h", 3, t("h.hparams", lang)),
        ("table", *hparams_table(summary, meta.get("lr_tuned"))),
    ]
    if meta.get("lr_source"):
        blocks.append(("p", t("lr_source", lang, source=meta["lr_source"])))
    if meta.get("skipped"):
        what = "; ".join(f"`{n}` ({why})" for n, why in meta["skipped"].items())
        blocks.append(("p", t("skipped", lang, what=what)))
    blocks += [("h", 3, t("h.run", lang))] + [
        ("p", line) for line in _run_lines(meta, machine, vers)
    ]
    shared = [s["label"] for s in summary.values() if not s["isolated"]]
    if shared:
        blocks.append(
            (
                "p",
                f"Runs of {', '.join(shared)} shared one process: their process peak "
                "is measured from a reset high-water mark but can be lowered by memory "
                "freed by earlier runs.",
            )
        )
    return blocks


# --------------------------------------------------------------------------------------------
# A sweep: per setting and per reference, paired with the default setting
# --------------------------------------------------------------------------------------------


def entry_runs(summary: dict, results: list[dict], k: str) -> list[dict]:
    """The runs behind the summary entry ``k``: a setting's, or a reference's."""
    if summary[k]["reference"]:
        return [r for r in results if r.get("setting") is None and r["optimizer"] == k]
    return [r for r in results if r.get("setting") == k]


def summarize_sweep(meta: dict, results: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    entries = [(s["label"], meta["optimizer"], s, False) for s in meta["settings"]]
    entries += [(n, n, {"values": {}, "default": False}, True) for n in meta["references"]]
    for key, opt, s, ref in entries:
        runs = [
            r
            for r in results
            if (r.get("setting") is None and r["optimizer"] == key)
            or (not ref and r.get("setting") == key)
        ]
        if runs:
            out[key] = {
                **summarize_runs(runs),
                "optimizer": opt,
                "values": s["values"],
                "default": s["default"],
                "reference": ref,
            }
    default = next((k for k, s in out.items() if s["default"]), None)
    runs = {k: entry_runs(out, results, k) for k in out}
    sigma2, dof = pooled_noise(
        {k: by_seed(rs, lambda r: r["final"]["metric"]) for k, rs in runs.items()}
    )
    meta["noise"] = {"sigma": None if sigma2 is None else math.sqrt(sigma2), "dof": dof}
    for k, s in out.items():
        if not s["reference"]:
            s["vs_references"] = {
                r: paired_diff(runs[k], runs[r], sigma2) for r, e in out.items() if e["reference"]
            }
        s["vs_default"] = (
            None if default in (None, k) else paired_diff(runs[k], runs[default], sigma2)
        )
    return out


def _digits(meta: dict) -> int:
    """Percentages to 0.01 points, losses to 1e-4 (settings of a language model differ by a few
    thousandths)."""
    return 2 if meta.get("percent") else 4


def _better(meta: dict, a: float) -> bool:
    return a > 0 if meta["higher_is_better"] else a < 0


def _paired_phrase(meta: dict, p: dict, other: str | None = None) -> str:
    """``"0.21 points worse than AdamW (±0.05 points, better on 0 of 3 seeds: beyond seed
    noise)"``; without ``other`` the comparison's name and the noise verdict are left out."""
    scale, unit, d = metric_scale(meta), " points" if meta.get("percent") else "", _digits(meta)
    text = (
        f"{abs(p['mean']) * scale:.{d}f}{unit} {'better' if _better(meta, p['mean']) else 'worse'}"
    )
    if other:
        text += f" than {other}"
    if p["noise"] is None:
        return text + " (one seed)"
    wins = sum(1 for x in p["diffs"] if _better(meta, x))
    text += f" (±{p['noise'] * scale:.{d}f}{unit}, better on {wins} of {p['n']} seeds"
    if other:
        text += f": {'beyond' if abs(p['mean']) > p['noise'] else 'within'} seed noise"
    return text + ")"


def findings(meta: dict, summary: dict) -> str:
    """A paragraph from the numbers: the best setting, each setting against the default, the
    best against the references, the memory and time range, stability events."""
    label = optim_mod.label
    points = {k: s for k, s in summary.items() if not s["reference"]}
    refs = {k: s for k, s in summary.items() if s["reference"]}
    fin = {k: s for k, s in points.items() if math.isfinite(s["metric"]["mean"])}
    if not fin:
        return "No setting finished with a finite result."
    scale, unit = metric_scale(meta), "%" if meta.get("percent") else ""
    best = max(
        fin, key=lambda k: (1 if meta["higher_is_better"] else -1) * fin[k]["metric"]["mean"]
    )
    n = len(meta["seeds"])
    parts = [
        f"Sweeping {' and '.join(a['key'] for a in meta['grid'])} of {label(meta['optimizer'])} "
        f"over {len(points)} settings ({meta['steps']} steps, {n} seed{'s' if n > 1 else ''} "
        f"each), the best mean final {meta['metric_name']} was at {best} "
        f"({fin[best]['metric']['mean'] * scale:.{_digits(meta)}f}{unit})."
    ]
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
            where = ("better" if _better(meta, p["mean"]) else "worse") if beyond else "within"
            groups[where].append(f"{k}: {_paired_phrase(meta, p)}")
        items = [
            f"{w} beyond seed noise: " + "; ".join(groups[w])
            for w in ("better", "worse")
            if groups[w]
        ]
        if groups["within"]:
            items.append("within seed noise: " + "; ".join(groups["within"]))
        parts.append(
            f"Against the default ({default}), seed by seed: " + " — ".join(items) + "."
            if items
            else f"The default ({default}) is the only setting that finished."
        )
    for name in refs:
        if not math.isfinite(refs[name]["metric"]["mean"]):
            continue
        entries = [(best, f"the best setting ({best})")]
        if default is not None and default != best:
            entries.append((default, f"the default ({default})"))
        texts = [
            f"{what} was {_paired_phrase(meta, p, label(name))}"
            for k, what in entries
            if (p := points[k].get("vs_references", {}).get(name)) is not None
        ]
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
    refs_text = ", ".join(f"{label(k)} {s[tkey]['mean']:.1f}" for k, s in refs.items())
    parts.append(
        f"{tname} ranged from {ms[lo]:.1f} ({lo}) to {ms[hi]:.1f} ({hi})"
        + (f"; references: {refs_text}" if refs else "")
        + "."
    )
    troubled = [
        f"{k}: " + _events_text(events(s["stability"]), "en")
        for k, s in summary.items()
        if any(events(s["stability"]).values())
    ]
    parts.append(
        "Stability events (all seeds): " + "; ".join(troubled) + "."
        if troubled
        else "No run had a non-finite step, a loss spike, a root or Cholesky failure, or diverged."
    )
    return " ".join(parts)


def _sweep_table(meta: dict, summary: dict) -> tuple[list, list]:
    scale, d = metric_scale(meta), _digits(meta)
    metric = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    second = _second(meta, next(iter(summary.values())), "en")
    head = [
        "setting",
        metric,
        *([second[0]] if second else []),
        "Δ vs default, paired (±2 s.e.)",
        "preconditioner state",
        "total optimizer state",
        "ms/step",
        "CPU ms/step",
        "wall time (s)",
        "non-finite / spikes / failures",
        "4-bit quant. error (last eval)",
    ]
    rows = []
    for name, s in summary.items():
        p = s.get("vs_default")
        delta = "(default)" if s["default"] else "—"
        if p is not None and not s["default"]:
            delta = f"{p['mean'] * scale:+.{d}f}"
            if p["noise"] is not None:
                delta += f" (±{p['noise'] * scale:.{d}f})"
                delta = f"**{delta}**" if abs(p["mean"]) > p["noise"] else delta
        ev, q = events(s["stability"]), s["quant_error"]["last"]
        shown = (f"`{name}` (reference)" if s["reference"] else name) + (
            " *(default)*" if s["default"] else ""
        )
        rows.append(
            [
                shown,
                fmt_mean_std(s["metric"], scale, d),
                *([_second(meta, s, "en")[1]] if second else []),
                delta,
                fmt_bytes(s["state_bytes"]["preconditioners"]),
                fmt_bytes(s["state_bytes"]["total"]),
                fmt_mean_std(s["ms_per_step"], 1.0, 1),
                fmt_mean_std(s["cpu_ms_per_step"], 1.0, 1),
                fmt_mean_std(s["wall_s"], 1.0, 1),
                f"{ev['nonfinite']} / {ev['spikes']} / {ev['failures']}",
                "—" if q is None else f"{q:.3f}",
            ]
        )
    return head, rows


def _hp_text(hp: dict) -> str:
    def one(v):
        return (
            "(" + ", ".join(one(x) for x in v) + ")"
            if isinstance(v, (list, tuple))
            else fmt_value(v)
        )

    return ", ".join(f"{k}={one(v)}" for k, v in sorted(hp.items()))


def sweep_blocks(meta, summary, machine, vers, plots) -> list[tuple]:
    keys = ", ".join(a["key"] for a in meta["grid"])
    grid = " × ".join(
        f"`{a['key']}` ∈ {{"
        + ", ".join(
            fmt_value(v) + (f" ({r})" if (r := a["relative"].get(fmt_value(v))) else "")
            for v in a["values"]
        )
        + "}"
        for a in meta["grid"]
    )
    noise = meta.get("noise") or {}
    scale, unit = metric_scale(meta), " points" if meta.get("percent") else ""
    noise_text = (
        ": not estimable with one seed"
        if noise.get("sigma") is None
        else f": σ = {noise['sigma'] * scale:.{_digits(meta)}f}{unit} per run, "
        f"{noise['dof']} degrees of freedom"
    )
    blocks = [("h", 1, f"qshampoo sweep: {meta['task']}, `{meta['optimizer']}` over {keys}")]
    blocks += [("p", line) for line in _run_lines(meta, machine, vers)]
    blocks += [
        (
            "p",
            f"Grid: {grid} for `{meta['optimizer']}`; references: "
            + (", ".join(f"`{r}`" for r in meta["references"]) or "none")
            + " at their usual settings. Same seed = same initialisation and data order "
            f"everywhere. Total time of the sweep: {meta['wall_s'] / 60:.1f} min.",
        )
    ]
    blocks += [("h", 2, "Results"), ("table", *_sweep_table(meta, summary))]
    blocks += [
        (
            "p",
            "*Δ vs default, paired*: the mean over seeds of (this − the setting equal to "
            "the current defaults, same seed), in the metric's units, ± twice its "
            "standard error; **bold** when the difference exceeds that (beyond seed "
            "noise). The run-to-run noise at a fixed seed is estimated once for the whole "
            "sweep (residual of an additive setting + seed model over every row"
            + noise_text
            + "). *CPU ms/step*: the run's CPU time per training step (all "
            "its threads); with one thread it is the compute itself, which other work on "
            "the machine inflates far less than the wall-clock *ms/step*. Other columns "
            "as in `qshampoo bench` (docs/harness.md).",
        )
    ]
    if meta.get("reused_runs"):
        blocks.append(
            (
                "p",
                f"{len(meta['reused_runs'])} runs with identical settings (same "
                "fingerprint) were taken from earlier folders instead of being "
                "trained again; their timings are from when they ran.",
            )
        )
    blocks += [("h", 2, "Findings"), ("p", findings(meta, summary)), ("h", 2, "Hyperparameters")]
    hp = [
        f"- `{meta['optimizer']}` (every setting, before the grid's values): "
        f"{_hp_text(meta['base_hparams'])}"
    ]
    hp += [
        f"- `{n}` (reference): {_hp_text(s['hparams'])}"
        for n, s in summary.items()
        if s["reference"]
    ]
    blocks.append(("p", "\n".join(hp)))
    if meta.get("lr_source"):
        blocks.append(("p", f"Learning rates: {meta['lr_source']}."))
    shown = lambda n, s: f"`{n}`" if s["reference"] else n  # noqa: E731
    head, rows = per_seed_table(meta, summary, shown, _digits(meta))
    blocks += [("h", 2, "Per seed"), ("table", ["setting", *head[1:]], rows), ("h", 2, "Plots")]
    return blocks + [("img", p, p) for p in plots]


# --------------------------------------------------------------------------------------------
# Writing a report
# --------------------------------------------------------------------------------------------


def write_report(out, meta: dict, results: list[dict], machine=None, vers=None, lang="en") -> dict:
    """Write ``report.md``, ``report.html``, ``results.json`` and the plots into ``out``; return
    the JSON. ``machine`` and ``vers`` default to this machine's (given when re-rendering)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "lang": lang}
    meta.setdefault("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    machine, vers = machine or machine_info(), vers or versions()
    if meta.get("kind") == "sweep":
        meta["reused_runs"] = [r["reused_from"] for r in results if r.get("reused_from")]
        summary = summarize_sweep(meta, results)
        plots = sweep_plots(
            out, meta, {k: entry_runs(summary, results, k) for k in summary}, summary
        )
        blocks, k = sweep_blocks(meta, summary, machine, vers, plots), None
        conclusion = {"findings": findings(meta, summary)}
        title = blocks[0][2]
    else:
        summary = {}
        for n in meta["optimizers"]:
            runs = [r for r in results if r["optimizer"] == n and "budget" not in r]
            if runs:
                summary[n] = {**summarize_runs(runs), "label": optim_mod.label(n, lang)}
        k = kpis(meta, summary, results)
        plots = bench_plots(out, meta, results, summary, k, lang)
        blocks = bench_blocks(meta, summary, k, machine, vers, plots, lang)
        conclusion = {"recommendation": recommendation(meta, summary, k, lang)}
        title = blocks[0][2]
    doc = {
        "meta": meta,
        "machine": machine,
        "versions": vers,
        "summary": summary,
        "kpis": k,
        **conclusion,
        "runs": results,
        "plots": plots,
    }
    write_json(out / "results.json", doc)
    (out / "report.md").write_text(to_markdown(blocks))
    (out / "report.html").write_text(to_html(blocks, out, title, lang))
    return doc


def report_folder(out, lang: str = "en", **meta) -> dict:
    """The report of the runs a :class:`~qshampoo.bench.recorder.Recorder` (or a callback) left
    in ``out/runs/<optimizer>/seed<k>/``; ``meta`` overrides what is read from them (e.g.
    ``task_description``)."""
    out = Path(out)
    results = [json.loads(p.read_text()) for p in sorted(out.glob(f"runs/*/seed*/{RESULT}"))]
    if not results:
        raise FileNotFoundError(f"no runs in {out / 'runs'}")
    reg = list(optim_mod.REGISTRY)
    names = sorted(
        {r["optimizer"] for r in results},
        key=lambda n: (optim_mod.is_shampoo(n), reg.index(n) if n in reg else len(reg), n),
    )
    m = results[0].get("metric", {})
    base = {
        "kind": "bench",
        "task": results[0].get("task", "custom"),
        "metric_name": m.get("name", "metric"),
        "higher_is_better": m.get("higher_is_better", True),
        "percent": m.get("percent", False),
        "metric_is_loss": m.get("name", "").endswith("loss"),
        "steps": max(r["completed_steps"] for r in results),
        "seeds": sorted({r["seed"] for r in results}),
        "optimizers": names,
        "command": "qshampoo.bench.Recorder",
    }
    return write_report(out, {**base, **meta}, results, lang=lang)


def rerender(out, lang: str | None = None) -> dict:
    """Write the report of a finished comparison or sweep again from its ``results.json`` (after
    a change to the report code, or in another language), keeping its command, date, machine,
    versions and timings."""
    doc = json.loads((Path(out) / "results.json").read_text())
    meta = doc["meta"]
    if "wall_s" not in meta:  # written before the comparison and the sweep shared one format
        meta["wall_s"] = meta.get("sweep_wall_s", meta.get("bench_wall_s", 0.0))
    return write_report(
        out, meta, doc["runs"], doc["machine"], doc["versions"], lang or meta.get("lang", "en")
    )
