"""The reports' PNG plots (matplotlib, Agg backend).

A comparison: ``kpi.png`` (the four numbers that decide), ``curves.png`` (learning curves against
the step and the training time, the metric axis zoomed on the final range), ``memory.png``,
``stability.png`` and ``quant_error.png``. A sweep: ``curves.png``, ``quality.png``, ``cost.png``
and ``pareto.png``. Entries are labelled with the registry's plain names, each with its own
colour, line style and marker, so that overlapping lines stay apart.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean

from .summary import fmt_value, metric_scale, time_key
from .text import t

STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 1)), "P")]
COLORS = ["#1b6ca8", "#d1495b", "#2e8b57", "#edae49", "#66418a", "#444444"]
CJK_FONTS = ("IPAGothic", "IPAPGothic", "Noto Sans CJK JP", "Noto Sans JP", "TakaoGothic")


def _plt(lang: str = "en"):
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


def _curves(ax_loss, ax_metric, entries: dict[str, list[dict]], labels, meta, axis="step"):
    """Mean learning curves of every entry: smoothed training loss, periodic metric."""
    import numpy as np

    scale = metric_scale(meta)
    window = max(1, meta["steps"] // 50)
    finals = []
    for i, (k, runs) in enumerate(entries.items()):
        st = _style(i)
        key = "step" if axis == "step" else "train_s"
        if ax_loss is not None:
            loss = _mean_curve([_smooth(r["losses"], window) for r in runs])
            ax_loss.plot(np.arange(1, len(loss) + 1), loss, label=labels[k], lw=1.4, **st)
        n = min(len(r["evals"]) for r in runs)
        if n:
            ys = np.array([[e["metric"] * scale for e in r["evals"][:n]] for r in runs])
            xs = np.mean([[e[key] for e in r["evals"][:n]] for r in runs], axis=0)
            ax_metric.plot(xs, ys.mean(0), label=labels[k], lw=1.4, ms=4, **st)
            if len(runs) > 1:
                ax_metric.fill_between(xs, ys.min(0), ys.max(0), color=st["color"], alpha=0.12)
            finals.append(float(ys.mean(0)[-1]))
    _zoom(ax_metric, finals, meta["higher_is_better"])
    if ax_loss is not None:
        ax_loss.set(yscale="log")
    for ax in (ax_loss, ax_metric):
        if ax is not None:
            ax.grid(alpha=0.3)


# --------------------------------------------------------------------------------------------
# A comparison
# --------------------------------------------------------------------------------------------


def bench_plots(out: Path, meta: dict, results: list[dict], summary: dict, kpis: dict, lang: str):
    """Write a comparison's plots into ``out``; return their file names."""
    import numpy as np

    plt = _plt(lang)
    names = list(summary)
    labels = {n: summary[n]["label"] for n in names}
    runs = {n: [r for r in results if r["optimizer"] == n and "budget" not in r] for n in names}
    metric = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    base = kpis.get("baseline")
    blabel = labels.get(base, "")
    scale, x = metric_scale(meta), np.arange(len(names))
    colors = [COLORS[i % len(COLORS)] for i in range(len(names))]
    mib = 2**20
    written = []

    # kpi.png: final metric per seed, optimizer memory at peak, training time, stability
    fig, ax = plt.subplots(1, 4, figsize=(15, 3.8))
    for i, n in enumerate(names):
        vals = [v * scale for v in summary[n]["metric"]["values"] if v is not None]
        ax[0].scatter([i] * len(vals), vals, color=colors[i], zorder=3)
        ax[0].hlines(summary[n]["metric"]["mean"] * scale, i - 0.3, i + 0.3, color=colors[i])
    seeds = [v * scale for n in names for v in summary[n]["metric"]["values"] if v is not None]
    _zoom(ax[0], seeds, meta["higher_is_better"])
    ax[0].set_title(t("plot.final", lang, metric=metric), fontsize=10)
    peak = np.array([summary[n]["optimizer_peak_bytes"]["mean"] for n in names]) / mib
    state = np.array([summary[n]["state_bytes"]["total"] for n in names]) / mib
    ax[1].bar(x, state, color=colors, label=t("plot.state", lang))
    ax[1].bar(
        x,
        np.nan_to_num(peak - state),
        bottom=state,
        color=colors,
        alpha=0.35,
        hatch="//",
        label=t("plot.workspace", lang),
    )
    ax[1].set_title(t("plot.peak", lang), fontsize=10)
    ax[1].legend(fontsize=8)
    # the clock the time KPI compares: CPU time with one thread on a CPU, else the wall clock
    clock = "cpu_s" if time_key(meta)[0] == "cpu_ms_per_step" else "train_s"
    full = np.array([summary[n][clock]["mean"] for n in names])
    ttq = [(kpis["rows"].get(n) or {}).get("ttq") or {} for n in names]
    reach = [r.get("time_ratio") if r.get("reached") == r.get("seeds") else None for r in ttq]
    reach = [full[names.index(base)] * r if r else math.nan for r in reach]
    ax[2].bar(x - 0.2, full, 0.4, color=colors, alpha=0.45, label=t("plot.full", lang))
    ax[2].bar(
        x + 0.2,
        reach,
        0.4,
        color=colors,
        label=t("plot.reach", lang, baseline=blabel, metric=meta["metric_name"]),
    )
    ax[2].set_title(
        t("plot.cpu_time" if clock == "cpu_s" else "plot.train_time", lang), fontsize=10
    )
    ax[2].legend(fontsize=8)
    grad = [summary[n]["stability"]["grad_norm_ratio"]["mean"] for n in names]
    ax[3].bar(x, np.nan_to_num(grad), color=colors)
    for i, n in enumerate(names):
        ev = sum(kpis["events"][n].values())
        ax[3].annotate(
            t("plot.events", lang, n=ev),
            (i, np.nan_to_num(grad[i])),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax[3].set_title(t("plot.grad", lang), fontsize=10)
    for a in ax:
        a.set_xticks(x, [labels[n] for n in names], rotation=15, ha="right", fontsize=8)
        a.grid(axis="y", alpha=0.3)
    written.append(_save(fig, out / "kpi.png"))

    # curves.png
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    _curves(ax[0], ax[1], runs, labels, meta, "step")
    _curves(None, ax[2], runs, labels, meta, "time")
    ax[0].set(xlabel=t("plot.step", lang), ylabel=t("plot.loss", lang))
    ax[1].set(xlabel=t("plot.step", lang), ylabel=t("plot.metric", lang, metric=metric))
    ax[2].set(xlabel=t("plot.time", lang), ylabel=t("plot.metric", lang, metric=metric))
    ax[0].legend(fontsize=8)
    fig.suptitle(t("plot.band", lang), fontsize=10)
    written.append(_save(fig, out / "curves.png"))

    # memory.png: what the optimizer adds, and what the whole process shows
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ax[0].bar(x, state, color=colors, label=t("plot.state", lang))
    ax[0].bar(
        x,
        np.nan_to_num(peak - state),
        bottom=state,
        color=colors,
        alpha=0.35,
        hatch="//",
        label=t("plot.workspace", lang),
    )
    ax[0].set_title(t("plot.peak", lang), fontsize=10)
    ax[0].legend(fontsize=8)
    rss = [summary[n]["rss_added_bytes"]["mean"] / mib for n in names]
    ax[1].bar(x, np.nan_to_num(rss), color=colors, alpha=0.6)
    ax[1].set_title(t("plot.rss", lang), fontsize=10)
    for a in ax:
        a.set_xticks(x, [labels[n] for n in names], rotation=15, ha="right", fontsize=8)
        a.grid(axis="y", alpha=0.3)
    written.append(_save(fig, out / "memory.png"))

    # stability.png: gradient norm and relative update size over the run
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    window = max(1, meta["steps"] // 100)
    for i, n in enumerate(names):
        for j, key in enumerate(("grad", "update_ratio")):
            curves = [r.get("norms", {}).get(key) or [] for r in runs[n]]
            if all(curves):
                c = _mean_curve([_smooth(v, window) for v in curves])
                ax[j].plot(range(1, len(c) + 1), c, label=labels[n], lw=1.2, **_style(i))
    ax[0].set(xlabel=t("plot.step", lang), title=t("plot.grad", lang).split(" / ")[0], yscale="log")
    ax[1].set(xlabel=t("plot.step", lang), title=t("plot.update", lang), yscale="log")
    for a in ax:
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    written.append(_save(fig, out / "stability.png"))

    with_qe = [n for n in names if summary[n]["quant_error"]["series"]]
    if with_qe:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for n in with_qe:
            s, v = zip(*summary[n]["quant_error"]["series"], strict=True)
            ax.plot(s, v, label=labels[n], ms=4, **_style(names.index(n)))
        ax.set(xlabel=t("plot.step", lang), title=t("plot.qerr", lang))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "quant_error.png"))
    return written


# --------------------------------------------------------------------------------------------
# A sweep
# --------------------------------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality; sorted by
    cost."""
    sign = 1.0 if higher_is_better else -1.0
    ok = [i for i, (c, q) in enumerate(points) if math.isfinite(c) and math.isfinite(q)]
    front = []
    for i in ok:
        c, q = points[i]
        if not any(
            (points[j][0] <= c and sign * points[j][1] >= sign * q)
            and (points[j][0] < c or sign * points[j][1] > sign * q)
            for j in ok
            if j != i
        ):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def sweep_plots(out: Path, meta: dict, runs: dict[str, list[dict]], summary: dict) -> list[str]:
    """Write a sweep's plots; ``runs`` maps each summary entry to its runs."""
    import numpy as np

    plt = _plt()
    scale = metric_scale(meta)
    mlabel = meta["metric_name"] + (" (%)" if meta.get("percent") else "")
    keys = [a["key"] for a in meta["grid"]]
    points = [k for k, s in summary.items() if not s["reference"]]
    refs = [k for k, s in summary.items() if s["reference"]]
    names = points + refs
    short = {
        k: k
        if summary[k]["reference"]
        else "/".join(fmt_value(v) for v in summary[k]["values"].values())
        for k in names
    }
    title = f"{meta['task']}: {meta['optimizer']} over {' × '.join(keys)}"
    legend = {
        k: f"{k} (reference)"
        if summary[k]["reference"]
        else k + (" (default)" if summary[k]["default"] else "")
        for k in names
    }
    written = []

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(12, 4.5))
    _curves(ax_loss, ax_metric, {k: runs[k] for k in names}, legend, meta)
    ax_loss.set(xlabel="step", ylabel="training loss (moving mean)")
    ax_metric.set(xlabel="step", ylabel=mlabel + " (periodic evaluation, mean over seeds)")
    ax_loss.legend(fontsize=7)
    fig.suptitle(f"{title}: learning curves (mean over seeds {meta['seeds']})")
    written.append(_save(fig, out / "curves.png"))

    first, second = meta["grid"][0], (meta["grid"][1] if len(meta["grid"]) > 1 else None)
    x = np.arange(len(first["values"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for gi, gv in enumerate(second["values"] if second else [None]):
        ys, es = [], []
        for v in first["values"]:
            want = {first["key"]: v, **({second["key"]: gv} if second else {})}
            k = next((p for p in points if summary[p]["values"] == want), None)
            s = summary[k]["metric"] if k else None
            ys.append(s["mean"] * scale if s else float("nan"))
            es.append((s["std"] or 0.0) * scale if s else 0.0)
        lab = f"{second['key']}={fmt_value(gv)}" if second else meta["optimizer"]
        ax.errorbar(x + 0.04 * gi, ys, yerr=es, capsize=4, label=lab, **_style(gi))
    for i, k in enumerate(refs):
        m = summary[k]["metric"]
        color = COLORS[(i + 1) % len(COLORS)]
        ax.axhline(m["mean"] * scale, color=color, ls="--", lw=1.2, label=f"{k} (reference)")
        if m["std"]:
            lo, hi = (m["mean"] - m["std"]) * scale, (m["mean"] + m["std"]) * scale
            ax.axhspan(lo, hi, color=color, alpha=0.1)
    ticks = [
        fmt_value(v) + (f"\n({r})" if (r := first["relative"].get(fmt_value(v))) else "")
        for v in first["values"]
    ]
    ax.set_xticks(x, ticks)
    ax.set(xlabel=first["key"], ylabel=f"final {mlabel} (mean ± std over seeds)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "quality.png"))

    tkey, tname = time_key(meta)
    xs = np.arange(len(names))
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    pre = np.array([summary[k]["state_bytes"]["preconditioners"] for k in names]) / 2**20
    base = np.array([summary[k]["state_bytes"]["base_state"] for k in names]) / 2**20
    ax_mem.bar(xs, base, color="#9ab", label="base optimizer state")
    ax_mem.bar(xs, pre, bottom=base, color="#c63", label="preconditioners")
    ax_mem.set(ylabel="optimizer state (MiB)", title="optimizer state (memory_report)")
    ax_mem.legend(fontsize=8)
    ms = [summary[k]["ms_per_step"]["mean"] for k in names]
    err = [summary[k]["ms_per_step"]["std"] or 0.0 for k in names]
    ax_time.bar(xs, ms, yerr=err, capsize=3, color="#888", alpha=0.45)
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
    for a in (ax_mem, ax_time):
        a.set_xticks(xs, [short[k] for k in names], rotation=30, ha="right", fontsize=8)
        a.set_xlabel(" / ".join(keys) + " (references by name)")
        a.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    written.append(_save(fig, out / "cost.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, cost, xlabel in (
        (axes[0], lambda s: s["state_bytes"]["total"] / 2**20, "total optimizer state (MiB)"),
        (axes[1], lambda s: s[tkey]["mean"], f"{tname} (training)"),
    ):
        pts = [(cost(summary[k]), summary[k]["metric"]["mean"] * scale) for k in names]
        for i, (k, (c, q)) in enumerate(zip(names, pts, strict=True)):
            s = summary[k]
            ax.errorbar(
                c,
                q,
                yerr=(s["metric"]["std"] or 0.0) * scale,
                capsize=3,
                ls="none",
                marker="s" if s["reference"] else "o",
                ms=7 if s["default"] else 5,
                color=COLORS[i % len(COLORS)],
            )
            ax.annotate(short[k], (c, q), textcoords="offset points", xytext=(4, 4), fontsize=7)
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
    written.append(_save(fig, out / "pareto.png"))
    return written
