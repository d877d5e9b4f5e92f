"""Quality against preconditioner bytes: a table and a Pareto plot from ``qshampoo bench`` runs.

Each argument is a report folder written by ``qshampoo bench`` (its ``results.json``); every
optimizer in it becomes a row. A row of ``shampoo4bit-auto`` is named by its ``memory_budget``.
The 32-bit Shampoo row (``shampoo``) is the reference: the table gives each row's difference
from it per seed (paired: same seed, same initialisation and data order) and on average, and
how many times fewer preconditioner bytes it holds.

    PYTHONPATH=. python benchmarks/adaptive_precision.py /tmp/sh_base /tmp/sh_auto_0.125 ... \\
        --plot docs/figures/adaptive-shakespeare.png

Preconditioner bytes are those the optimizer holds at the end of the run (``memory_report()``);
under ``bits="auto"`` they never exceed the budget at any step (tests/test_precision.py), and
the table shows the budget beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

NAMES = {
    "shampoo": "32-bit Shampoo",
    "shampoo4bit": "4-bit CQ+EF",
    "shampoo8bit": "8-bit CQ+EF",
    "shampoo8bit-cholesky": "8-bit CQ",
    "shampoo4bit-cholesky": "4-bit CQ",
    "shampoo4bit-naive": "4-bit VQ",
    "adamw": "AdamW",
}


def rows_of(folder: Path) -> tuple[dict, list[dict]]:
    res = json.loads((folder / "results.json").read_text())
    meta = res["meta"]
    out = []
    for name in res["summary"]:
        runs = [r for r in res["runs"] if r["optimizer"] == name]
        runs.sort(key=lambda r: r["seed"])
        hp = runs[0]["hparams"]
        label = NAMES.get(name, name)
        if hp.get("bits") == 8 and label.startswith("4-bit"):  # e.g. --hp shampoo4bit.bits=8
            label = "8-bit" + label[len("4-bit") :]
        budget = None
        if name.startswith("shampoo4bit-auto"):
            budget = hp.get("memory_budget", 1 / 7)
            label = f"auto, budget {budget:g}"
            if isinstance(budget, float):
                label += f" (1/{1 / budget:.3g})"
            if name.endswith("-inverse"):
                label += ", ranking reversed (ablation)"
        precision = [r["diagnostics"].get("precision") for r in runs]
        out.append(
            dict(
                name=name,
                label=label,
                folder=str(folder),
                seeds=[r["seed"] for r in runs],
                values=[r["final"]["metric"] for r in runs],
                losses=[r["final"]["loss"] for r in runs],
                bytes=[r["memory"]["optimizer_state"]["preconditioners"] for r in runs],
                budget_bytes=[p["memory_budget"] for p in precision] if precision[0] else None,
                bits8=[p["factors_8bit"] for p in precision] if precision[0] else None,
                bits4=[p["factors_4bit"] for p in precision] if precision[0] else None,
                switches=[(p["promotions"], p["demotions"]) for p in precision]
                if precision[0]
                else None,
                command=meta.get("command"),
                steps=meta["steps"],
                budget=budget,
            )
        )
    return res, out


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path, default=None, help="write the Pareto plot here")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()

    rows, meta = [], None
    for folder in args.folders:
        res, rs = rows_of(folder)
        meta = meta or res["meta"]
        rows.extend(rs)
    ref = next((r for r in rows if r["name"] == "shampoo"), None)
    higher = meta["higher_is_better"]
    percent = meta["percent"]
    scale = 100.0 if percent else 1.0
    metric = meta["metric_name"] + (" (%)" if percent else "")

    loss_col = not meta.get("metric_is_loss", False)  # accuracy tasks: the loss as well
    print(
        f"| variant | {metric}, per seed | mean | vs 32-bit, per seed | vs 32-bit | "
        + ("test loss vs 32-bit | " if loss_col else "")
        + "preconditioner bytes (end) | budget | less than 32-bit | factors 8-bit / 4-bit | "
        "switches (up / down) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if loss_col else ""))
    for r in rows:
        vals = r["values"]
        mean = statistics.fmean(vals)
        digits = 2 if percent else 4
        per_seed = ", ".join(f"{v * scale:.{digits}f}" for v in vals)
        if ref is not None and ref["seeds"] == r["seeds"]:
            if percent:  # accuracy: difference in points
                diffs = [(v - w) * scale for v, w in zip(vals, ref["values"], strict=True)]
                d_seed = ", ".join(f"{d:+.2f}" for d in diffs)
                d_mean = f"{statistics.fmean(diffs):+.2f} pt"
            else:  # loss: relative difference
                diffs = [100 * (v / w - 1) for v, w in zip(vals, ref["values"], strict=True)]
                d_seed = ", ".join(f"{d:+.2f}%" for d in diffs)
                d_mean = f"{statistics.fmean(diffs):+.2f}%"
        else:
            d_seed = d_mean = "—"
        d_loss = "—"
        if ref is not None and ref["seeds"] == r["seeds"]:
            rel = [100 * (v / w - 1) for v, w in zip(r["losses"], ref["losses"], strict=True)]
            d_loss = f"{statistics.fmean(rel):+.2f}%"
        nbytes = max(r["bytes"])
        ratio = f"{max(ref['bytes']) / nbytes:.2f}×" if ref else "—"
        budget = fmt_bytes(max(r["budget_bytes"])) if r["budget_bytes"] else "—"
        bits = (
            ", ".join(f"{a} / {b}" for a, b in zip(r["bits8"], r["bits4"], strict=True))
            if r["bits8"]
            else "—"
        )
        sw = ", ".join(f"{a} / {b}" for a, b in r["switches"]) if r["switches"] else "—"
        mean_s = f"{mean * scale:.2f}" if percent else f"{mean:.4f}"
        print(
            f"| {r['label']} | {per_seed} | {mean_s} | {d_seed} | {d_mean} | "
            + (f"{d_loss} | " if loss_col else "")
            + f"{fmt_bytes(nbytes)} | {budget} | {ratio} | {bits} | {sw} |"
        )
    print()
    for folder in args.folders:
        res = json.loads((folder / "results.json").read_text())
        print(f"- `{res['meta']['command']}`")
    if args.plot:
        plot(rows, ref, args.plot, metric, scale, higher, args.title or meta["task"])


def plot(rows, ref, path: Path, metric: str, scale: float, higher: bool, title: str) -> None:
    """Paired difference from 32-bit Shampoo (per seed and mean) against preconditioner bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    percent = scale != 1.0

    def diffs(r):  # loss: relative difference in %; accuracy: difference in points
        pairs = zip(r["values"], ref["values"], strict=True)
        if percent:
            return [(v - w) * scale for v, w in pairs]
        return [100 * (v / w - 1) for v, w in pairs]

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    auto = sorted((r for r in rows if r["name"] == "shampoo4bit-auto"), key=lambda r: r["budget"])
    if auto:
        xs = [max(r["bytes"]) / 2**20 for r in auto]
        ys = [statistics.fmean(diffs(r)) for r in auto]
        ax.plot(xs, ys, "-", color="tab:red", alpha=0.5, zorder=1)
    others = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:olive"])
    for r in rows:
        x = max(r["bytes"]) / 2**20
        ys = diffs(r)
        color = "tab:red" if r["name"] == "shampoo4bit-auto" else next(others)
        ax.scatter([x] * len(ys), ys, s=14, alpha=0.45, color=color, zorder=2)
        ax.scatter([x], [statistics.fmean(ys)], s=60, color=color, zorder=3, marker="D")
        auto_row = r["name"].startswith("shampoo4bit-auto")
        short = r["label"].split(" (")[0].replace("budget ", "")
        if r["name"].endswith("-inverse"):
            short = short.replace("auto", "reversed")
        ax.annotate(
            short if auto_row else r["label"],
            (x, statistics.fmean(ys)),
            textcoords="offset points",
            xytext=(-8, -3) if auto_row else (6, 4),
            ha="right" if auto_row else "left",
            fontsize=8,
        )
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    if not percent:
        ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="32-bit + 0.5% (the goal)")
    seven = max(ref["bytes"]) / 7 / 2**20
    ax.axvline(seven, color="grey", lw=0.8, ls="-.", label="7× less than 32-bit")
    ax.legend(loc="best", fontsize=8)
    ax.set_xscale("log")
    low = min(max(r["bytes"]) for r in rows) / 2**20
    ax.set_xlim(left=low / 1.45)  # room for the labels left of the auto points
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("preconditioner bytes at the end of the run (MiB, log scale)")
    what = "points" if percent else "%"
    ax.set_ylabel(f"final {metric} − 32-bit Shampoo's ({what}, same seed)")
    ax.set_title(f"{title}: dots = seeds, diamonds = mean")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
