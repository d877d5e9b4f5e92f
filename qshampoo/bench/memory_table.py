"""``qshampoo memory``: optimizer-state memory of the papers' models, per variant.

Computed from parameter shapes alone (models built on the ``meta`` device) with the formulas
of :mod:`qshampoo.memory`, which the tests check against real ``memory_report()`` figures, and
the step's workspace: the most a step may allocate on top of the state
(``memory_report()["workspace"]`` of an optimizer over the meta parameters, which
``tests/test_workspace.py`` checks against the temporaries of real steps).
"""

from __future__ import annotations

import math

import torch

from ..memory import state_bytes
from ..optimizer import Shampoo
from .paper_models import PAPER_MODELS, meta_shapes

VARIANTS = ("none", "naive", "eigen", "cholesky", "cholesky_ef")
MB = 2**20


def memory_rows(models=tuple(PAPER_MODELS), **opt_kwargs) -> list[dict]:
    rows = []
    for name in models:
        builder, base, paper = PAPER_MODELS[name]
        shapes = meta_shapes(builder)
        row = {
            "model": name,
            "params_M": sum(math.prod(s) for s in shapes) / 1e6,
            "base": base,
            "paper": paper,
        }
        row["base_state_MB"] = state_bytes(shapes, base=base, precondition=False)["total"] / MB
        for v in VARIANTS:
            rep = state_bytes(shapes, base=base, quant=v, **opt_kwargs)
            row[v] = rep["preconditioners"] / MB
        params = [torch.empty(s, device="meta") for s in shapes]
        for v in ("none", "cholesky_ef"):
            opt = Shampoo(params, base=base, quant=v, **opt_kwargs)
            row[f"workspace_{v}"] = opt.memory_report()["workspace"] / MB
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "Optimizer state (MB): the base optimizer's moments, and the preconditioners each "
        "Shampoo variant adds on top.",
        "",
        "| model | params (M) | base | base state | "
        + " | ".join(f"+{v}" for v in VARIANTS)
        + " | 32-bit / 4-bit CQ+EF |",
        "|---|---|---|---|" + "---|" * len(VARIANTS) + "---|",
    ]
    for r in rows:
        cells = " | ".join(f"{r[v]:.1f}" for v in VARIANTS)
        lines.append(
            f"| {r['model']} | {r['params_M']:.1f} | {r['base']} | {r['base_state_MB']:.1f} | "
            f"{cells} | {r['none'] / r['cholesky_ef']:.1f}x |"
        )
    lines += [
        "",
        "A step's peak adds at most the workspace (max_workspace_bytes bounds it) to the "
        "state; MB, and the ratio of state + workspace:",
        "",
        "| model | 32-bit: state + workspace | 4-bit CQ+EF: state + workspace | ratio |",
        "|---|---|---|---|",
    ]
    for r in rows:
        full, low = r["none"] + r["workspace_none"], r["cholesky_ef"] + r["workspace_cholesky_ef"]
        lines.append(
            f"| {r['model']} | {r['none']:.1f} + {r['workspace_none']:.1f} | "
            f"{r['cholesky_ef']:.1f} + {r['workspace_cholesky_ef']:.1f} | {full / low:.1f}x |"
        )
    lines += [
        "",
        "Paper A's totals (GPU memory incl. activations, MB) and what Shampoo adds over the base "
        "optimizer there, next to the preconditioner memory computed here:",
        "",
        "| model | paper base | paper 32-bit (+added) | paper 4-bit CQ+EF (+added) | "
        "here +32-bit | here +CQ+EF |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["paper"]
        if not p:
            continue
        lines.append(
            f"| {r['model']} | {p['base']:.0f} | {p['shampoo']:.0f} "
            f"(+{p['shampoo'] - p['base']:.0f}) | {p['cholesky_ef']:.0f} "
            f"(+{p['cholesky_ef'] - p['base']:.0f}) | +{r['none']:.0f} | "
            f"+{r['cholesky_ef']:.0f} |"
        )
    return "\n".join(lines)
