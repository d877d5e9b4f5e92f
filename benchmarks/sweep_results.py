"""Assemble benchmarks/RESULTS_sweep.md from the report folders of ``qshampoo sweep``.

    python benchmarks/sweep_results.py /work/sweeps/fm-ef_decay /work/sweeps/sh-ef_decay ... \\
        --figures docs/figures > sections.md

For every folder: the command, the machine, the date, the wall time and the load average, the
results table, the findings and the per-seed table, all read from its ``results.json`` and
``report.md`` (nothing is recomputed). Then one table across folders: per swept key and value,
the difference from the default on each task. With ``--figures DIR``, the quality and Pareto
plots (and the curves) are copied to ``DIR/sweep-<folder>-<plot>.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from qshampoo.bench.summary import metric_scale
from qshampoo.bench.verdict import compare_means

FIGURES = ("curves", "quality", "pareto", "cost")


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start + len(f"## {title}\n") : end if end >= 0 else None].strip()


def folder_section(folder: Path, figures: Path | None, level: int = 3) -> str:
    doc = json.loads((folder / "results.json").read_text())
    md = (folder / "report.md").read_text()
    meta, machine, vers = doc["meta"], doc["machine"], doc["versions"]
    load = meta.get("load_average") or {}
    h = "#" * level
    lines = [
        f"{h} {folder.name}",
        "",
        f"Command: `{meta['command']} --out {folder.name}`"
        if "--out" not in meta["command"]
        else f"Command: `{meta['command']}`",
        "",
        f"Ran {meta['date']} on {machine['cpu']}, {machine['cores']} cores, "
        f"{meta.get('threads') or machine['torch_threads']} torch thread per run, torch "
        f"{vers.get('torch')}, qshampoo git {vers.get('qshampoo_git')}; wall time "
        f"{meta['sweep_wall_s'] / 60:.1f} min"
        + (
            f", load average {load['start'][0]:g} → {load['end'][0]:g}"
            if load.get("start") and load.get("end")
            else ""
        )
        + (
            f"; {len(meta['reused_runs'])} runs reused from earlier folders (`--reuse`)"
            if meta.get("reused_runs")
            else ""
        )
        + ".",
        "",
        _section(md, "Results"),
        "",
        "**Findings** (generated): " + doc["findings"],
        "",
        "Per seed:",
        "",
        _section(md, "Per seed"),
        "",
    ]
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        for plot in FIGURES:
            src = folder / f"{plot}.png"
            if src.exists():
                shutil.copyfile(src, figures / f"sweep-{folder.name}-{plot}.png")
    return "\n".join(lines)


def cross_table(folders: list[Path]) -> str:
    """Per (key, value): the difference from the default point on each task, ± 2 s.e."""
    cells: dict[str, dict[str, str]] = {}  # setting label -> task -> cell, in grid order
    tasks: list[str] = []
    for folder in folders:
        doc = json.loads((folder / "results.json").read_text())
        meta, summary = doc["meta"], doc["summary"]
        task = meta["task"]
        if task not in tasks:
            tasks.append(task)
        default = next((s for s in summary.values() if s["default"]), None)
        if default is None:
            continue
        scale = metric_scale(meta)
        for name, s in summary.items():
            if s["reference"] or s["default"]:
                continue
            diff, noise = compare_means(s["metric"], default["metric"])
            text = f"{diff * scale:+.2f}"
            if noise is not None:
                text += f" ± {noise * scale:.2f}"
                if abs(diff) > noise:
                    text = f"**{text}**"
            cells.setdefault(name, {})[task] = text
    head = ["setting (vs the default)", *tasks]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, by_task in cells.items():
        rows.append(f"| {name} | " + " | ".join(by_task.get(t, "—") for t in tasks) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("--figures", default=None, help="copy the plots into this folder")
    args = p.parse_args(argv)
    folders = [Path(f) for f in args.folders]
    figures = Path(args.figures) if args.figures else None
    out = [folder_section(f, figures) for f in folders]
    out += [
        "### Every setting against the default, both tasks",
        "",
        "Difference of the mean final metric from the default point of the same sweep "
        "(accuracy in points: higher is better; validation loss: lower is better), ± twice its "
        "standard error; **bold**: beyond that.",
        "",
        cross_table(folders),
        "",
    ]
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
