"""Assemble benchmarks/RESULTS_sweep.md from the report folders of ``qshampoo sweep``.

    python benchmarks/sweep_results.py /work/sweeps/fm-ef_decay /work/sweeps/sh-ef_decay ... \\
        --figures docs/figures > sections.md

For every folder: the command, the machine, the date, the wall time and the load average, the
results table, the findings and the per-seed table, all read from its ``results.json`` and
``report.md`` (nothing is recomputed). Then one table across folders: per swept key and value,
the difference from the default on each task. With ``--figures DIR``, the quality and Pareto
plots named by ``--plots`` (default: quality) are copied to ``DIR/sweep-<folder>-<plot>.png`` and
linked from the sections (the links are relative to ``benchmarks/``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

from qshampoo.bench.summary import metric_scale

FIGURES = ("curves", "quality", "pareto", "cost")


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start + len(f"## {title}\n") : end if end >= 0 else None].strip()


def folder_section(
    folder: Path, figures: Path | None, plots: tuple[str, ...] = ("quality",), level: int = 3
) -> str:
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
        f"{meta.get('wall_s', meta.get('sweep_wall_s', 0)) / 60:.1f} min"
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
        for plot in plots:
            src = folder / f"{plot}.png"
            if src.exists():
                dst = figures / f"sweep-{folder.name}-{plot}.png"
                shutil.copyfile(src, dst)
                lines += [f"![{folder.name}: {plot}](../{dst.as_posix()})", ""]
    return "\n".join(lines)


def task_noise(docs: list[dict]) -> dict[str, tuple[float, int]]:
    """Per task, the run-to-run variance at a fixed seed pooled over all its sweeps (each
    sweep's residual variance weighted by its degrees of freedom): ``{task: (sigma2, dof)}``."""
    ss: dict[str, float] = {}
    dofs: dict[str, int] = {}
    for doc in docs:
        task, noise = doc["meta"]["task"], doc["meta"].get("noise") or {}
        if noise.get("sigma") is not None and noise.get("dof"):
            ss[task] = ss.get(task, 0.0) + noise["sigma"] ** 2 * noise["dof"]
            dofs[task] = dofs.get(task, 0) + noise["dof"]
    return {t: (ss[t] / dofs[t], dofs[t]) for t in ss}


def cross_table(folders: list[Path]) -> str:
    """Per setting: the paired difference from the default point of its sweep on each task,
    ± twice its standard error from the task's pooled run-to-run noise."""
    docs = [json.loads((f / "results.json").read_text()) for f in folders]
    noise = task_noise(docs)
    cells: dict[str, dict[str, str]] = {}  # setting label -> task -> cell, in grid order
    tasks: dict[str, tuple[float, int, str]] = {}  # task -> scale, digits, unit
    for doc in docs:
        meta, summary = doc["meta"], doc["summary"]
        task = meta["task"]
        scale = metric_scale(meta)
        digits = 2 if meta.get("percent") else 4
        tasks[task] = (scale, digits, " points" if meta.get("percent") else "")
        for name, s in summary.items():
            p = s.get("vs_default")
            if s["reference"] or p is None:
                continue
            text = f"{p['mean'] * scale:+.{digits}f}"
            if task in noise:
                band = 2.0 * math.sqrt(2.0 * noise[task][0] / p["n"])
                text += f" ± {band * scale:.{digits}f}"
                if abs(p["mean"]) > band:
                    text = f"**{text}**"
            cells.setdefault(name, {})[task] = text
    head = ["setting (vs the default)", *tasks]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, by_task in cells.items():
        rows.append(f"| {name} | " + " | ".join(by_task.get(t, "—") for t in tasks) + " |")
    sigmas = ", ".join(
        f"{t}: σ = {math.sqrt(v) * tasks[t][0]:.{tasks[t][1]}f}{tasks[t][2]} "
        f"({d} degrees of freedom)"
        for t, (v, d) in noise.items()
    )
    return "\n".join(rows) + f"\n\nPooled run-to-run noise per task: {sigmas}."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("--figures", default=None, help="copy the plots into this folder")
    p.add_argument(
        "--plots",
        default="quality",
        help=f"comma-separated plots to copy, of {', '.join(FIGURES)} (default: quality)",
    )
    args = p.parse_args(argv)
    folders = [Path(f) for f in args.folders]
    figures = Path(args.figures) if args.figures else None
    plots = tuple(args.plots.split(","))
    if unknown := set(plots) - set(FIGURES):
        p.error(f"--plots: unknown {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    out = [folder_section(f, figures, plots) for f in folders]
    out += [
        "### Every setting against the default, both tasks",
        "",
        "Mean over seeds of (this − the default point of the same sweep, same seed) (accuracy "
        "in points: higher is better; validation loss: lower is better), ± twice its standard "
        "error computed from the task's run-to-run noise pooled over all its sweeps; **bold**: "
        "beyond that.",
        "",
        cross_table(folders),
        "",
    ]
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
