"""A report's PNG plots (matplotlib, Agg backend), the same for a comparison and a sweep.

``kpi.png`` (the four numbers that decide: final metric per seed, optimizer memory at peak,
training time, gradient-norm peak), ``curves.png`` (learning curves against the step and the
training time, the metric axis zoomed on the final range), ``memory.png`` (the process's peak),
``stability.png``, ``quant_error.png``; a sweep also ``quality.png`` (final quality against the
swept setting). Entries carry their report labels, each with its own colour, line style and
marker, so that overlapping lines stay apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean

from .summary import metric_scale, runs_of, time_key
from .text import t

STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 1)), "P")]
COLORS = ["#1b6ca8", "#d1495b", "#2e8b57", "#edae49", "#66418a", "#444444"]
CJK_FONTS = ("IPAGothic", "IPAPGothic", "Noto Sans CJK JP", "Noto Sans JP", "TakaoGothic")
MIB = 2**20


def _plt(lang: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    fonts = ["DejaVu Sans"]
    if lang == "ja":  # glyphs DejaVu lacks come from the first CJK font installed
        have = {f.name for f in font_manager.fontManager.ttflist}
        if not have & set(CJK_FONTS):  # installed after matplotlib cached its font list
            for path in font_manager.findSystemFonts():
                if any(k in Path(path).name.lower() for k in ("ipag", "notosanscjk", "takao")):
                    font_manager.fontManager.addfont(path)
            have = {f.name for f in font_manager.fontManager.ttflist}
        fonts += [f for f in CJK_FONTS if f in have]
    plt.rcParams["font.family"] = fonts
    return plt


def _style(i: int) -> dict:
    ls, marker = STYLES[i % len(STYLES)]
    return {"color": COLORS[i % len(COLORS)], "ls": ls, "marker": marker, "markevery": 0.1}


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _smooth(values: list[float], window: int) -> list[float]:
    """Moving mean over ``window`` steps (non-finite values count as NaN)."""
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


def _zoom(ax, finals: list[float], hib: bool) -> None:
    """Zoom the metric axis on the final values: the differences that decide are a point or two,
    which a 40–90 % axis hides."""
    finals = [v for v in finals if math.isfinite(v)]
    if finals:
        lo, hi = min(finals), max(finals)
        pad = max(hi - lo, 0.005 * abs(hi), 1e-6)
        ax.set_ylim(*((lo - 2 * pad, hi + pad / 2) if hib else (lo - pad / 2, hi + 2 * pad)))


def _curves(ax_loss, ax_metric, runs: dict[str, list[dict]], labels, meta, axis="step"):
    """Mean learning curves of every entry: smoothed training loss, periodic metric (band: the
    seeds' range)."""
    import numpy as np

    finals = []
    for i, (k, rs) in enumerate(runs.items()):
        st = _style(i)
        if ax_loss is not None:
            loss = _mean_curve([_smooth(r["losses"], max(1, meta["steps"] // 50)) for r in rs])
            ax_loss.plot(np.arange(1, len(loss) + 1), loss, label=labels[k], lw=1.4, **st)
        n = min(len(r["evals"]) for r in rs)
        if n:
            ys = np.array([[e["metric"] * metric_scale(meta) for e in r["evals"][:n]] for r in rs])
            xs = np.mean([[e[axis] for e in r["evals"][:n]] for r in rs], axis=0)
            ax_metric.plot(xs, ys.mean(0), label=labels[k], lw=1.4, ms=4, **st)
            if len(rs) > 1:
                ax_metric.fill_between(xs, ys.min(0), ys.max(0), color=st["color"], alpha=0.12)
            finals.append(float(ys.mean(0)[-1]))
    _zoom(ax_metric, finals, meta["higher_is_better"])
    if ax_loss is not None:
        ax_loss.set(yscale="log")
    for ax in (ax_loss, ax_metric):
        if ax is not None:
            ax.grid(alpha=0.3)


def write_plots(out: Path, meta: dict, summary: dict, results: list[dict], k: dict, lang: str):
    """Write the report's plots into ``out``; return their file names, the KPI figure first."""
    import numpy as np

    plt = _plt(lang)
    names = list(summary)
    labels = {n: summary[n]["label"] for n in names}
    runs = {n: runs_of(results, n) for n in names}
    metric = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    scale, x = metric_scale(meta), np.arange(len(names))
    colors = [COLORS[i % len(COLORS)] for i in range(len(names))]
    base, written = k.get("baseline"), []

    def ticks(axes):
        for a in axes:
            a.set_xticks(x, [labels[n] for n in names], rotation=20, ha="right", fontsize=8)
            a.grid(axis="y", alpha=0.3)

    # kpi.png: final metric per seed, optimizer memory at peak, training time, stability
    fig, ax = plt.subplots(1, 4, figsize=(15, 3.9))
    for i, n in enumerate(names):
        vals = [v * scale for v in summary[n]["metric"]["values"] if v is not None]
        ax[0].scatter([i] * len(vals), vals, color=colors[i], zorder=3)
        ax[0].hlines(summary[n]["metric"]["mean"] * scale, i - 0.3, i + 0.3, color=colors[i])
    finals = [v * scale for n in names for v in summary[n]["metric"]["values"] if v is not None]
    _zoom(ax[0], finals, meta["higher_is_better"])
    ax[0].set_title(t("plot.final", lang, metric=metric), fontsize=10)
    # optimizer memory at peak: the state, and the step's workspace on top of it
    peak = np.array([summary[n]["optimizer_peak_bytes"]["mean"] for n in names]) / MIB
    state = np.array([summary[n]["state_bytes"]["total"] for n in names]) / MIB
    ax[1].bar(x, state, color=colors, label=t("plot.state", lang))
    workspace, label = np.nan_to_num(peak - state), t("plot.workspace", lang)
    ax[1].bar(x, workspace, bottom=state, color=colors, alpha=0.35, hatch="//", label=label)
    ax[1].set_title(t("col.peak", lang), fontsize=10)
    ax[1].legend(fontsize=8)
    # the clock the time KPI compares: CPU time with one thread on a CPU, else the wall clock
    clock = "cpu_s" if time_key(meta) == "cpu_ms_per_step" else "train_s"
    full = np.array([summary[n][clock]["mean"] for n in names])
    ax[2].bar(x - 0.2, full, 0.4, color=colors, alpha=0.45, label=t("plot.full", lang))
    if base in names and any((k["rows"].get(n) or {}).get("ttq") for n in names):
        reach = []
        for n in names:
            q = (k["rows"].get(n) or {}).get("ttq") or {}
            ok = q.get("time_ratio") and q.get("reached") == q.get("seeds")
            reach.append(full[names.index(base)] * q["time_ratio"] if ok else math.nan)
        label = t("plot.reach", lang, baseline=labels[base], metric=meta["metric_name"])
        ax[2].bar(x + 0.2, reach, 0.4, color=colors, label=label)
    ax[2].set_title(t("plot.cpu_time" if clock == "cpu_s" else "col.train_s", lang), fontsize=10)
    ax[2].legend(fontsize=8)
    grad = [summary[n]["stability"]["grad_norm_ratio"]["mean"] for n in names]
    ax[3].bar(x, np.nan_to_num(grad), color=colors)
    for i, n in enumerate(names):
        ev = sum(k["events"][n].values())
        at = (i, np.nan_to_num(grad[i]))
        ax[3].annotate(t("plot.events", lang, n=ev), at, ha="center", va="bottom", fontsize=8)
    ax[3].set_title(t("col.gradratio", lang), fontsize=10)
    ticks(ax)
    written.append(_save(fig, out / "kpi.png"))

    if meta.get("kind") == "sweep":
        written.append(_quality(plt, out, meta, summary, lang))

    # curves.png: loss and metric against the step, metric against the training time
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    _curves(ax[0], ax[1], runs, labels, meta, "step")
    _curves(None, ax[2], runs, labels, meta, "train_s")
    ax[0].set(xlabel=t("plot.step", lang), ylabel=t("plot.loss", lang))
    ax[1].set(xlabel=t("plot.step", lang), ylabel=t("plot.metric", lang, metric=metric))
    ax[2].set(xlabel=t("col.train_s", lang), ylabel=t("plot.metric", lang, metric=metric))
    ax[0].legend(fontsize=8)
    fig.suptitle(t("plot.band", lang), fontsize=10)
    written.append(_save(fig, out / "curves.png"))

    # memory.png: the process's peak, which on a small model hides what the optimizer adds
    fig, ax = plt.subplots(figsize=(6, 3.9))
    ax.bar(
        x, np.nan_to_num([summary[n]["rss_added_bytes"]["mean"] / MIB for n in names]), color=colors
    )
    ax.set_title(t("plot.rss", lang), fontsize=10)
    ticks([ax])
    written.append(_save(fig, out / "memory.png"))

    # stability.png: gradient norm and relative update size over the run, quantization error
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.9))
    for i, n in enumerate(names):
        for j, key in enumerate(("grad", "update_ratio")):
            curves = [r.get("norms", {}).get(key) or [] for r in runs[n]]
            if all(curves):
                c = _mean_curve([_smooth(v, max(1, meta["steps"] // 100)) for v in curves])
                ax[j].plot(range(1, len(c) + 1), c, label=labels[n], lw=1.2, **_style(i))
        if series := summary[n]["quant_error"]["series"]:
            ax[2].plot(*zip(*series, strict=True), label=labels[n], ms=4, **_style(i))
    for a, title in zip(ax, ("plot.grad", "plot.update", "plot.qerr"), strict=True):
        a.set(xlabel=t("plot.step", lang), title=t(title, lang), yscale="log")
        a.grid(alpha=0.3)
        if a.lines:  # no quantized optimizer: its panel stays empty
            a.legend(fontsize=8)
    written.append(_save(fig, out / "stability.png"))
    return written


def _quality(plt, out: Path, meta: dict, summary: dict, lang: str) -> str:
    """A sweep's final quality (mean ± std over seeds) against the first swept setting, one line
    per value of the second; the references as bands."""
    import numpy as np

    from .summary import fmt_value

    scale = metric_scale(meta)
    first, *second = meta["grid"]
    points = [s for s in summary.values() if not s.get("reference")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(len(first["values"]))
    for gi, gv in enumerate(second[0]["values"] if second else [None]):
        ys, es = [], []
        for v in first["values"]:
            want = {first["key"]: v, **({second[0]["key"]: gv} if second else {})}
            s = next((p["metric"] for p in points if p["values"] == want), None)
            ys.append(s["mean"] * scale if s else math.nan)
            es.append((s["std"] or 0.0) * scale if s else 0.0)
        label = f"{second[0]['key']}={fmt_value(gv)}" if second else meta["optimizer"]
        ax.errorbar(x + 0.04 * gi, ys, yerr=es, capsize=4, label=label, **_style(gi))
    for i, s in enumerate(p for p in summary.values() if p.get("reference")):
        m, color = s["metric"], COLORS[(i + 1) % len(COLORS)]
        ax.axhline(m["mean"] * scale, color=color, ls="--", lw=1.2, label=s["label"])
        if m["std"]:
            lo, hi = (m["mean"] - m["std"]) * scale, (m["mean"] + m["std"]) * scale
            ax.axhspan(lo, hi, color=color, alpha=0.1)
    rel = first.get("relative", {})
    ticks = [
        fmt_value(v) + (f"\n({r})" if (r := rel.get(fmt_value(v))) else "") for v in first["values"]
    ]
    ax.set_xticks(x, ticks)
    metric = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    ax.set(xlabel=first["key"], ylabel=t("plot.final_std", lang, metric=metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "quality.png")
