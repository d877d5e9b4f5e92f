"""The report of a comparison (``qshampoo bench``) or a sweep (``qshampoo sweep``): ``report.md``,
``report.html`` (the same page, self-contained: plots embedded, no network), ``results.json`` and
the PNG plots.

A comparison's page starts with one recommendation sentence derived from the measurements by the
rules in ``docs/harness.md``, then four KPI tiles relative to the baseline (AdamW) with paired
95 % intervals, then the KPI figure; a sweep's page with its findings and the quality of every
setting. Then the appendix: tables, plots, glossary, hyperparameters, how it was run. A page is a
list of blocks that :func:`render` writes both as Markdown and as HTML, so the two never differ;
every string comes from :mod:`qshampoo.bench.text`, in English or Japanese.
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
from .plots import write_plots
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
    pooled_noise,
    roles,
    runs_of,
    stats_of,
    summarize_runs,
    time_key,
    time_to_quality,
    ttq_summary,
    verdict_of,
)
from .text import t

# --------------------------------------------------------------------------------------------
# Rendering. Blocks: ("h", level, text), ("p", text), ("table", head, rows), ("img", file, alt),
# ("tiles", [{"title", "note", "rows": [(label, value, detail, strong)]}], corner)
# --------------------------------------------------------------------------------------------

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
table{border-collapse:collapse;font-size:.85em;margin:8px 0;display:block;overflow-x:auto}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}img{max-width:100%}
"""


def _inline(text: str) -> str:
    """Markdown's bold, italics and code in ``text`` as HTML."""
    text = html.escape(str(text), quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


def _md_table(head: list, rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _html_table(head: list, rows: list[list]) -> str:
    def cells(tag, row):
        return "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in row)

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', head)}</tr>{body}</table>"


def _html_tile(tile: dict) -> str:
    rows = "".join(
        f'<div class="row{" strong" if strong else ""}">{_inline(name)} '
        f'<span class="v">{_inline(v)}</span><span class="d">{_inline(d)}</span></div>'
        for name, v, d, strong in tile["rows"]
    )
    title, note = _inline(tile["title"]), _inline(tile["note"])
    return f'<div class="tile"><h3>{title}</h3><div class="note">{note}</div>{rows}</div>'


def render(blocks: list[tuple], out: Path, lang: str) -> tuple[str, str]:
    """``blocks`` as Markdown and as one HTML page whose images are embedded from ``out``."""
    md, body = [], []
    for kind, *a in blocks:
        if kind == "h":
            md.append("#" * a[0] + " " + a[1])
            body.append(f"<h{a[0]}>{_inline(a[1])}</h{a[0]}>")
        elif kind == "p":
            md.append(a[0])
            decision = a[0].startswith("**") and len(body) == 1  # the sentence under the title
            cls = ' class="decision"' if decision else ""
            body.append(f"<p{cls}>{_inline(a[0])}</p>")
        elif kind == "img":
            md.append(f"![{a[1]}]({a[0]})")
            data = base64.b64encode((out / a[0]).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(a[1])}" src="data:image/png;base64,{data}">')
        elif kind == "table":
            md.append(_md_table(*a))
            body.append(_html_table(*a))
        elif kind == "tiles":  # Markdown: one row per tile, one column per optimizer
            tiles, corner = a
            rows = [
                [f"**{tl['title']}** ({tl['note']})"]
                + [(f"**{v}**" if s else v) + (f"; {d}" if d else "") for _, v, d, s in tl["rows"]]
                for tl in tiles
            ]
            md.append(_md_table([corner, *(r[0] for r in tiles[0]["rows"])], rows))
            body.append(f'<div class="tiles">{"".join(map(_html_tile, tiles))}</div>')
    title = html.escape(blocks[0][2])
    page = (
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    return "\n\n".join(md) + "\n", page


# --------------------------------------------------------------------------------------------
# The decision: KPIs relative to the baseline, and the recommendation
# --------------------------------------------------------------------------------------------


def kpis(meta: dict, summary: dict, results: list[dict]) -> dict:
    """Per optimizer but the baseline: paired comparisons with the baseline (and 32-bit
    Shampoo), the time to quality, and every optimizer's stability events."""
    names = list(summary)
    k = roles(names)
    b, ref, hib = k["baseline"], k["reference"], meta["higher_is_better"]
    tkey = time_key(meta)  # CPU time per step with one thread on a CPU: the compute itself
    get = {
        "metric": lambda r: r["final"]["metric"],
        "peak": lambda r: r["memory"].get("optimizer_peak_bytes"),
        "ms": lambda r: r["time"].get(tkey) or r["time"]["ms_per_step"],
        "grad": lambda r: r["stability"].get("grad_norm_ratio"),
    }

    def pair(a, other, what, ratio=False):
        if other is None:
            return None
        return paired(*(by_seed(runs_of(results, n), get[what]) for n in (a, other)), ratio)

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
        if b and meta.get("budgets") and n == k["candidate"]:
            clock = "cpu_s" if tkey == "cpu_ms_per_step" else "train_s"
            row["ttq"] = ttq_summary(time_to_quality(results, n, b, hib, clock))
        if ref and n != ref:
            row["vs_reference"] = pair(n, ref, "metric")
            row["memory_vs_reference"] = pair(ref, n, "peak", True)
            row["time_vs_reference"] = pair(n, ref, "ms", True)
        if n == k["candidate"]:  # the cheaper alternatives a user would consider (registry: peer)
            peers = [p for p in names if p in optim_mod.REGISTRY and optim_mod.spec(p).peer]
            row["vs_peers"] = {p: pair(n, p, "metric") for p in peers}
        rows[n] = row
    return {**k, "rows": rows, "events": {n: events(summary[n]["stability"]) for n in names}}


def _digits(meta: dict) -> int:
    """Percentages to 0.01 points, losses to 1e-4 (settings of a language model differ by a few
    thousandths)."""
    return 2 if meta.get("percent") else 4


def _signed(x: float, meta: dict) -> str:
    return f"{x * metric_scale(meta):+.{_digits(meta)}f}"


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
    return t(
        "ev.diff",
        lang,
        diff=f"{abs(gain) * metric_scale(meta):.{_digits(meta)}f}",
        unit=t("unit.points", lang) if meta.get("percent") else "",
        dir=t("dir.better" if gain >= 0 else "dir.worse", lang),
        other=other,
        ci=_ci(p, meta, lang),
    )


def _events_text(ev: dict[str, int], lang: str) -> str:
    return ", ".join(t(f"event.{k}", lang, n=v) for k, v in ev.items() if v)


def _ttq_text(ttq: dict, fields: dict, lang: str) -> str:
    """Time to quality: the median budget and time ratio when every seed reached the target."""
    if ttq["reached"] == ttq["seeds"]:
        return t("ev.ttq", lang, budget=100 * ttq["budget"], time=ttq["time_ratio"], **fields)
    if ttq["reached"]:
        return t("ev.ttq_some", lang, n=ttq["reached"], seeds=ttq["seeds"], **fields)
    return t("ev.ttq_no", lang, **fields)


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
    if qr == "same":
        evidence.append(t("ev.same_as", lang, metric=meta["metric_name"], other=label[ref]))
    elif qr:
        evidence.append(_quality_phrase(row["vs_reference"], label[ref], meta, lang))
    if row["quality"]:
        evidence.append(_quality_phrase(row["quality"], label[b], meta, lang))
    for peer, p in (row.get("vs_peers") or {}).items():
        if p is not None:
            evidence.append(_quality_phrase(p, label[peer], meta, lang))
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
        evidence.append(_ttq_text(ttq, fields, lang))
    if any(ev.values()):
        evidence.append(t("ev.unstable", lang, events=_events_text(ev, lang)))
    else:
        evidence.append(t("ev.stable", lang, seeds=len(summary[c]["seeds"]), steps=meta["steps"]))
    return t(
        "rec.sentence",
        lang,
        verdict=f"**{t(verdict, lang, **fields)}**",
        candidate=label[c],
        evidence=("、" if lang == "ja" else ", ").join(evidence),
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
            detail += "; " + _ttq_text(row["ttq"], fields, lang)
        out["time"].append((label[n], tm and f"{tm['mean']:.2f}×" or "—", detail, strong))
        ev = k["events"][n]
        ratio = "—" if g is None else f"{g['mean']:.2f}× " + _ci(g, meta, lang, True)
        listed = _events_text(ev, lang)  # the value already says "0 events"
        detail = t("tile.events" if listed else "tile.grad_peak", lang, events=listed, ratio=ratio)
        out["stability"].append(
            (label[n], t("plot.events", lang, n=sum(ev.values())), detail, strong)
        )
    cpu = "_cpu" if time_key(meta) == "cpu_ms_per_step" else ""
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
# A sweep: every setting against the default one and the references
# --------------------------------------------------------------------------------------------


def sweep_comparisons(meta: dict, summary: dict, results: list[dict]) -> None:
    """Each setting against the default setting and each reference, seed by seed, with the
    run-to-run noise pooled over the whole sweep (recorded in ``meta["noise"]``)."""
    metric = {e: by_seed(runs_of(results, e), lambda r: r["final"]["metric"]) for e in summary}
    noise = pooled_noise(metric)
    meta["noise"] = {"sigma": None if noise[0] is None else math.sqrt(noise[0]), "dof": noise[1]}
    default = next((e for e, s in summary.items() if s["default"]), None)
    refs = [e for e, s in summary.items() if s["reference"]]
    for e, s in summary.items():
        if not s["reference"]:
            same = default in (None, e)
            s["vs_default"] = None if same else paired(metric[e], metric[default], noise=noise)
            s["vs_references"] = {r: paired(metric[e], metric[r], noise=noise) for r in refs}


def findings(meta: dict, summary: dict, lang: str = "en") -> str:
    """Sentences from the numbers: the best setting, each setting against the default, the best
    and the default against each reference, stability events."""
    points = {e: s for e, s in summary.items() if not s["reference"]}
    fin = {e: s for e, s in points.items() if math.isfinite(s["metric"]["mean"])}
    if not fin:
        return t("sw.none", lang)
    hib, scale = meta["higher_is_better"], metric_scale(meta)
    best = max(fin, key=lambda e: (1 if hib else -1) * fin[e]["metric"]["mean"])
    value = f"{fin[best]['metric']['mean'] * scale:.{_digits(meta)}f}"
    value += "%" if meta.get("percent") else ""
    parts = [t("sw.best", lang, metric=meta["metric_name"], best=best, value=value)]
    default = next((e for e, s in points.items() if s["default"]), None)
    if default is None:
        parts.append(t("sw.no_default", lang))
    else:
        groups: dict[str, list[str]] = {"better": [], "worse": [], "same": []}
        for e, s in fin.items():
            groups.get(verdict_of(s.get("vs_default"), hib), []).append(e)
        verdicts = "; ".join(
            t(f"sw.{v}", lang, entries=", ".join(es)) for v, es in groups.items() if es
        )
        parts.append(t("sw.vs_default", lang, default=default, verdicts=verdicts or "—"))
    for r in (r for r, s in summary.items() if s["reference"]):
        for e in dict.fromkeys(x for x in (best, default) if x in fin):
            if p := fin[e]["vs_references"].get(r):
                phrase = _quality_phrase(p, optim_mod.label(r, lang), meta, lang)
                parts.append(t("sw.vs", lang, setting=e, phrase=phrase))
    troubled = [
        f"{s['label']}: {_events_text(events(s['stability']), lang)}"
        for s in summary.values()
        if any(events(s["stability"]).values())
    ]
    parts.append(
        t("sw.unstable", lang, events="; ".join(troubled)) if troubled else t("sw.stable", lang)
    )
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# The appendix
# --------------------------------------------------------------------------------------------


def _entry_column(meta: dict, lang: str) -> str:
    return t("col.setting" if meta.get("kind") == "sweep" else "col.optimizer", lang)


def _mib(n: float | None) -> str:
    return "—" if n is None or not math.isfinite(n) else f"{n / 2**20:.2f}"


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


def _delta(meta: dict, p: dict | None) -> str:
    """A sweep's ``this − default``, with its 95 % interval; bold when it excludes 0."""
    if p is None:
        return "—"
    scale, d = metric_scale(meta), _digits(meta)
    text = f"{p['mean'] * scale:+.{d}f}"
    if p["lo"] is not None:
        text += f" [{p['lo'] * scale:+.{d}f}, {p['hi'] * scale:+.{d}f}]"
    return f"**{text}**" if verdict_of(p) in ("better", "worse") else text


def results_table(meta: dict, summary: dict, k: dict, lang: str = "en") -> tuple[list, list]:
    """One row per entry, one unit per column."""
    sweep, scale, tkey = meta.get("kind") == "sweep", metric_scale(meta), time_key(meta)
    baseline = summary[k["baseline"]]["label"] if k.get("baseline") else "—"
    second = _second(meta, next(iter(summary.values())), lang)

    def ttq(n, s):
        q = (k["rows"].get(n) or {}).get("ttq")
        if n == k.get("baseline") or not q or not q["reached"]:
            return "100" if n == k.get("baseline") else "—"
        return f"{100 * q['budget']:.0f} ({q['reached']}/{q['seeds']})"

    def qerr(n, s):
        q = s["quant_error"]
        return "—" if q["first"] is None else f"{q['first']:.3f} → {q['last']:.3f}"

    metric_name, grad = meta["metric_name"], "grad_norm_ratio"
    metric = metric_name + (" (%)" if meta.get("percent") else "")
    time = "col.cpu_ms" if tkey == "cpu_ms_per_step" else "col.ms"
    budgets = bool(meta.get("budgets")) and not sweep
    columns = [
        (_entry_column(meta, lang), lambda n, s: s["label"]),
        (metric, lambda n, s: fmt_mean_std(s["metric"], scale, _digits(meta))),
        *([(second[0], lambda n, s: _second(meta, s, lang)[1])] if second else []),
        *(
            [(t("col.delta", lang), lambda n, s: _delta(meta, s.get("vs_default")))]
            if sweep
            else []
        ),
        (t("col.peak", lang), lambda n, s: _mib(s["optimizer_peak_bytes"]["mean"])),
        (t("col.state", lang), lambda n, s: _mib(s["state_bytes"]["total"])),
        (t("col.precond", lang), lambda n, s: _mib(s["state_bytes"]["preconditioners"])),
        (t("col.rss", lang), lambda n, s: _mib(s["peak_rss_bytes"]["mean"])),
        (t(time, lang), lambda n, s: fmt_mean_std(s[tkey], 1.0, 1)),
        (t("col.train_s", lang), lambda n, s: fmt_mean_std(s["train_s"], 1.0, 1)),
        *([(t("col.ttq", lang, baseline=baseline, metric=metric_name), ttq)] if budgets else []),
        (t("col.spikes", lang), lambda n, s: events(s["stability"])["spikes"]),
        (t("col.nonfinite", lang), lambda n, s: events(s["stability"])["nonfinite"]),
        (t("col.failures", lang), lambda n, s: events(s["stability"])["failures"]),
        (t("col.gradratio", lang), lambda n, s: fmt_mean_std(s["stability"][grad], 1.0, 1)),
        (t("col.qerr", lang), qerr),
    ]
    return [h for h, _ in columns], [[f(n, s) for _, f in columns] for n, s in summary.items()]


def per_seed_table(meta: dict, summary: dict, lang: str = "en") -> tuple[list, list]:
    """The final metric of every entry at each seed (``—`` where it has none)."""
    scale, seeds, d = metric_scale(meta), meta["seeds"], _digits(meta)
    rows = []
    for s in summary.values():
        by = dict(zip(s["seeds"], s["metric"]["values"], strict=True))
        rows.append(
            [s["label"]] + ["—" if by.get(k) is None else f"{by[k] * scale:.{d}f}" for k in seeds]
        )
    return [_entry_column(meta, lang)] + [t("col.seed", lang, seed=k) for k in seeds], rows


def _hp(v) -> str:
    return "(" + ", ".join(map(_hp, v)) + ")" if isinstance(v, (list, tuple)) else fmt_value(v)


def hparams_blocks(meta: dict, summary: dict, lang: str) -> list[tuple]:
    """The hyperparameters that differ between entries as a table, the shared ones as text."""
    keys = sorted({k for s in summary.values() for k in s["hparams"]} - {"base"})
    untuned = meta.get("lr_tuned") or {}

    def cell(name, s, key):
        text = _hp(s["hparams"][key]) if key in s["hparams"] else ""
        untuned_lr = key == "lr" and untuned.get(s.get("optimizer", name)) is False
        return text + (" " + t("hp.untuned", lang) if untuned_lr else "")

    values = {k: {cell(n, s, k) for n, s in summary.items()} for k in keys}
    shared = [k for k in keys if len(values[k]) == 1 and len(summary) > 1]
    cols = [k for k in keys if k not in shared]
    rows = [[s["label"], *(cell(n, s, k) for k in cols)] for n, s in summary.items()]
    blocks = [("table", [_entry_column(meta, lang), *cols], rows)]
    if shared:
        text = ", ".join(f"{k}={next(iter(values[k]))}" for k in shared)
        blocks.append(("p", t("hp.shared", lang, values=text)))
    return blocks


def _machine_text(meta: dict, machine: dict, vers: dict) -> str:
    threads = meta.get("threads") or machine["torch_threads"]
    text = f"{machine['cpu']}, {machine['cores']} cores ({threads} torch threads per run)"
    if machine.get("memory_bytes"):
        text += f", {fmt_bytes(machine['memory_bytes'])} RAM"
    for g in machine.get("gpus", []):
        text += f", GPU {g['name']} ({fmt_bytes(g['memory_bytes'])})"
    return text + f"; torch {vers.get('torch')}"


def _run_lines(meta: dict, machine: dict, vers: dict, lang: str) -> list[str]:
    """The command, date, machine, versions, load, task and schedule a report comes from."""
    lines = [t("run.command", lang, command=meta["command"])] if meta.get("command") else []
    git = f" (git {vers['qshampoo_git']})" if vers.get("qshampoo_git") else ""
    fields = {"version": f"{vers.get('qshampoo', '?')}{git}", "device": meta.get("device", "cpu")}
    fields.update(date=meta.get("date", ""), machine=_machine_text(meta, machine, vers))
    lines.append(t("run.date", lang, **fields))
    if meta.get("task_description"):
        fields = {k: meta.get(k) for k in ("task_description", "steps", "batch_size", "final_lr")}
        fields.update(seeds=", ".join(map(str, meta["seeds"])), warmup=100 * meta["warmup"])
        fields["where"] = meta.get("final_eval_what") or "the test set"
        lines.append(t("run.task", lang, **fields))
    load = meta.get("load_average") or {}
    if load.get("start") and load.get("end"):
        start, end = load["start"][0], load["end"][0]
        lines.append(t("run.load", lang, start=start, end=end, cores=machine["cores"]))
    if meta.get("validation"):
        lines.append(t("run.validation", lang))
    if meta.get("overrides"):
        lines.append(t("run.overrides", lang, overrides=json.dumps(meta["overrides"])))
    return lines


def page(meta: dict, summary: dict, k: dict, machine: dict, vers: dict, plots, lang) -> list:
    """The report's blocks, top to bottom."""
    sweep = meta.get("kind") == "sweep"
    label = {n: s["label"] for n, s in summary.items()}
    fields = {"baseline": label.get(k.get("baseline"), "—"), "metric": meta["metric_name"]}
    if sweep:
        optimizer, keys = optim_mod.label(meta["optimizer"], lang), [a["key"] for a in meta["grid"]]
        title = t("sw.title", lang, task=meta["task"], optimizer=optimizer, keys=", ".join(keys))
        blocks = [("h", 1, title), ("p", findings(meta, summary, lang))]
        blocks.append(("img", "quality.png", t("plot.final_std", lang, metric=meta["metric_name"])))
    else:
        blocks = [("h", 1, t("title", lang, task=meta["task"]))]
        if sentence := recommendation(meta, summary, k, lang):
            blocks.append(("p", sentence))
        if k["rows"] and k["baseline"]:
            blocks.append(("tiles", tiles(meta, summary, k, lang), t("col.kpi", lang, **fields)))
    blocks.append(("img", "kpi.png", t("kpi_alt", lang)))
    run = {"task": meta["task"], "steps": meta["steps"], "seeds": len(meta["seeds"])}
    run.update(
        runs=sum(len(s["seeds"]) for s in summary.values()), minutes=meta.get("wall_s", 0) / 60
    )
    blocks.append(("p", t("run", lang, machine=_machine_text(meta, machine, vers), **run)))
    # A sweep's page is tables and plots; its sections are level 2, as benchmarks/sweep_results.py
    # reads them. A comparison's sit in an appendix below the decision.
    lvl = 2 if sweep else 3
    if not sweep:
        blocks.append(("h", 2, t("appendix", lang)))
    blocks += [("h", lvl, t("h.results", lang)), ("table", *results_table(meta, summary, k, lang))]
    if sweep:
        noise, unit = meta["noise"], t("unit.points", lang) if meta.get("percent") else ""
        sigma = f"{(noise['sigma'] or 0) * metric_scale(meta):.{_digits(meta)}f}{unit}"
        text = t("sw.noise", lang, sigma=sigma, dof=noise["dof"]) if noise["dof"] else None
        blocks.append(("p", t("sw.method", lang, noise=text or t("sw.noise1", lang))))
    else:
        blocks += [("h", lvl, t("h.rules", lang))]
        blocks.append(("p", t("rules", lang, candidate=label.get(k["candidate"], "—"), **fields)))
    blocks += [("h", lvl, t("h.per_seed", lang)), ("table", *per_seed_table(meta, summary, lang))]
    blocks += [("h", lvl, t("h.plots", lang))]
    blocks += [("img", p, p) for p in plots if p not in ("kpi.png", "quality.png")]
    budgets = ", ".join(f"{100 * f:g}" for f in meta.get("budgets") or []) or "—"
    spike = {"window": SPIKE_WINDOW, "mads": SPIKE_MADS, "rise": 100 * SPIKE_RISE}
    blocks += [("h", lvl, t("h.glossary", lang))]
    blocks += [
        ("p", t(key, lang, budgets=budgets, **spike, **fields))
        for key in ("gl.peak", "gl.rss", "gl.time", "gl.ttq", "gl.spike", "gl.quant", "gl.names")
        if key != "gl.ttq" or meta.get("budgets")
    ]
    blocks += [("h", lvl, t("h.hparams", lang)), *hparams_blocks(meta, summary, lang)]
    if meta.get("lr_source"):
        blocks.append(("p", t("lr_source", lang, source=meta["lr_source"])))
    if meta.get("skipped"):
        what = "; ".join(f"`{n}` ({why})" for n, why in meta["skipped"].items())
        blocks.append(("p", t("skipped", lang, what=what)))
    if meta.get("reused_runs"):
        blocks.append(("p", t("run.reused", lang, n=len(meta["reused_runs"]))))
    blocks += [("h", lvl, t("h.run", lang))]
    blocks += [("p", line) for line in _run_lines(meta, machine, vers, lang)]
    if shared := [s["label"] for s in summary.values() if not s["isolated"]]:
        blocks.append(("p", t("run.shared", lang, names=", ".join(shared))))
    return blocks


# --------------------------------------------------------------------------------------------
# Writing a report
# --------------------------------------------------------------------------------------------


def summarize(meta: dict, results: list[dict], lang: str) -> dict[str, dict]:
    """Per entry — an optimizer of a comparison, a setting or a reference of a sweep — the
    statistics over its seeds and its label."""
    if meta.get("kind") == "sweep":
        entries = [
            (s["label"], {"values": s["values"], "default": s["default"], "reference": False})
            for s in meta["settings"]
        ]
        entries += [
            (r, {"values": {}, "default": False, "reference": True}) for r in meta["references"]
        ]
    else:
        entries = [(n, {}) for n in meta["optimizers"]]
    out = {}
    for e, extra in entries:
        if runs := runs_of(results, e):
            if extra.get("reference"):
                name = optim_mod.label(e, lang) + t("sw.reference", lang)
            elif extra:
                name = e + (t("sw.default", lang) if extra["default"] else "")
            else:
                name = optim_mod.label(e, lang)
            out[e] = {
                **summarize_runs(runs),
                **extra,
                "optimizer": runs[0]["optimizer"],
                "label": name,
            }
    return out


def write_report(out, meta: dict, results: list[dict], machine=None, vers=None, lang="en") -> dict:
    """Write ``report.md``, ``report.html``, ``results.json`` and the plots into ``out``; return
    the JSON. ``machine`` and ``vers`` default to this machine's (given when re-rendering)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "lang": lang}
    meta.setdefault("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    machine, vers = machine or machine_info(), vers or versions()
    summary = summarize(meta, results, lang)
    if meta.get("kind") == "sweep":
        meta["reused_runs"] = [r["reused_from"] for r in results if r.get("reused_from")]
        sweep_comparisons(meta, summary, results)
        k = {"rows": {}, "events": {e: events(s["stability"]) for e, s in summary.items()}}
        conclusion = {"findings": findings(meta, summary, lang)}
    else:
        k = kpis(meta, summary, results)
        conclusion = {"recommendation": recommendation(meta, summary, k, lang)}
    plots = write_plots(out, meta, summary, results, k, lang)
    md, page_html = render(page(meta, summary, k, machine, vers, plots, lang), out, lang)
    doc = {"meta": meta, "machine": machine, "versions": vers, "summary": summary, "kpis": k}
    doc.update(conclusion, runs=results, plots=plots)
    write_json(out / "results.json", doc)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(page_html)
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
    lang = lang or meta.get("lang", "en")
    return write_report(out, meta, doc["runs"], doc["machine"], doc["versions"], lang)
