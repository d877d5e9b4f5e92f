"""``qshampoo spectral``: the inverse-root error table of every variant.

Synthetic PD matrices (two spectra, several orders and condition numbers) and real
preconditioner statistics captured from a short 32-bit Shampoo run on the digits MLP.

Every variant is measured after it has converged on the fixed matrix: ``UPDATES`` statistics
updates with it (``stat_decay=0`` unless asked otherwise), as ``metrics.variant_root`` does.
The naive variant (VQ) takes its roots by coupled Newton iteration, as Paper B's code does
(``factors.naive``); the eigenvector variant (Paper B) is warm-started from the matrix's
exact eigenvectors, as Paper B's Table 1 measures it. CQ+EF is reported twice: the root of
the factor stored after the last update (*snapshot*: what a root step sees), and the root of
the mean of the factors stored over the last ``AVERAGE`` updates (*averaged*: what error
feedback makes accurate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..metrics import exact_inverse_root, root_errors, synthetic_pd, variant_root

#: statistics updates with the fixed matrix before the root is taken (every variant)
UPDATES = 20
#: CQ+EF's averaged column: the mean factor of the last this many updates
AVERAGE = 10


@dataclass(frozen=True)
class Column:
    quant: str
    warm_start: bool = False  # from the exact eigenvectors (the eigenvector variant)
    averaged: bool = False  # the root of the mean factor of the last AVERAGE updates


#: the table's columns, by their heading
COLUMNS: dict[str, Column] = {
    "32-bit": Column("none"),
    "VQ": Column("naive"),
    "Paper B (eigenvectors)": Column("eigen", warm_start=True),
    "CQ": Column("cholesky"),
    "CQ+EF snapshot": Column("cholesky_ef"),
    "CQ+EF averaged": Column("cholesky_ef", averaged=True),
}


@dataclass
class Row:
    matrix: str
    n: int
    errors: dict[str, tuple[float, float]]  # column -> (NRE, AE degrees)


def variant_errors(
    A: torch.Tensor, columns=tuple(COLUMNS), updates: int = UPDATES, **kw
) -> dict[str, tuple[float, float]]:
    """``(NRE, AE)`` of each column's root of ``A`` after ``updates`` updates; ``kw`` go to
    ``variant_root`` (``bits``, ``block_size``, ``codebook``, ``ef_decay``, ``stat_decay``)."""
    ref = exact_inverse_root(A)
    out = {}
    for name in columns:
        c = COLUMNS[name]
        average = min(AVERAGE, updates) if c.averaged else 0
        g = variant_root(
            A, c.quant, updates=updates, warm_start=c.warm_start, average=average, **kw
        )
        out[name] = root_errors(ref, g)
    return out


def captured_statistics(steps: int = 300, seed: int = 0) -> dict[str, torch.Tensor]:
    """L and R of the first layer of a digits MLP after ``steps`` of 32-bit Shampoo."""
    from sklearn.datasets import load_digits

    from ..optimizer import Shampoo

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = Shampoo(net.parameters(), lr=3e-3, stat_interval=1, root_interval=20)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g, device=g.device)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    block = opt.state[net[0].weight]["precond"][0]
    return {
        "digits-mlp L (256)": block["L"]["stat"].clone(),
        "digits-mlp R (64)": block["R"]["stat"].clone(),
    }


def spectral_rows(
    sizes=(64, 256, 1024),
    conds=(1e2, 1e4, 1e6),
    kinds=("logspace", "lowrank"),
    real: bool = True,
    **kw,
) -> list[Row]:
    rows = []
    for kind in kinds:
        for n in sizes:
            for cond in conds:
                A = synthetic_pd(n, cond, kind=kind)
                rows.append(Row(f"{kind} cond {cond:.0e}", n, variant_errors(A, **kw)))
    if real:
        for name, A in captured_statistics().items():
            rows.append(Row(name, A.shape[0], variant_errors(A, **kw)))
    return rows


def markdown(rows: list[Row], columns=tuple(COLUMNS)) -> str:
    head = "| matrix | n | " + " | ".join(f"{c} NRE % / AE °" for c in columns) + " |"
    sep = "|---|---|" + "---|" * len(columns)
    lines = [head, sep]
    for r in rows:
        cells = [f"{100 * r.errors[c][0]:.1f} / {r.errors[c][1]:.1f}" for c in columns]
        lines.append(f"| {r.matrix} | {r.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def vq_root_rows(n: int = 256, conds=(1e2, 1e4, 1e6)) -> str:
    """VQ's inverse-root error with its roots by coupled Newton (as Paper B's code, and
    qshampoo, take them) and by ``eigh`` with the negative eigenvalues of the dequantized
    4-bit matrix clamped to 0, and how many negative eigenvalues it has."""
    from ..factors import FACTORS, FactorConfig, StepHyper
    from ..roots import inverse_root

    lines = [
        "| matrix | n | negative eigenvalues | Newton NRE % / AE ° | eigh (clamped) NRE % / AE ° |",
        "|---|---|---|---|---|",
    ]
    for kind in ("logspace", "lowrank"):
        for cond in conds:
            A = synthetic_pd(n, cond, kind=kind)
            f = FACTORS["naive"].new(n, FactorConfig(), A.device, 1e-6)
            f.update_statistics(A, StepHyper(stat_decay=0.0))
            S = f.statistics()
            neg = int((torch.linalg.eigvalsh(S.double()) < 0).sum())
            ref = exact_inverse_root(A)
            cells = []
            for method in ("newton", "eigh"):
                nre, ae = root_errors(ref, inverse_root(S, 4, 1e-6, method)[0])
                cells.append(f"{100 * nre:.1f} / {ae:.1f}")
            lines.append(f"| {kind} cond {cond:.0e} | {n} | {neg} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def root_storage_rows(sizes=(64, 256, 1024), cond: float = 1e4) -> str:
    """Error of storing the inverse root as full rows vs its lower triangle (exact diagonal)."""
    from ..quant import dequantize, dequantize_symmetric, quantize

    lines = [
        "| n | matrix | full rows NRE % | lower triangle NRE % | bytes full | bytes tri |",
        "|---|---|---|---|---|---|",
    ]
    for n in sizes:
        for kind in ("logspace", "lowrank"):
            root = exact_inverse_root(synthetic_pd(n, cond, kind=kind)).float()
            full = quantize(root, exact_diagonal=True)
            tri = quantize(root, layout="tril", exact_diagonal=True)
            e_full = root_errors(root, dequantize(full))[0]
            e_tri = root_errors(root, dequantize_symmetric(tri))[0]
            lines.append(
                f"| {n} | {kind} cond {cond:.0e} | {100 * e_full:.2f} | "
                f"{100 * e_tri:.2f} | {full.nbytes} | {tri.nbytes} |"
            )
    return "\n".join(lines)


def run(sizes=(64, 256, 1024), real: bool = True, updates: int = UPDATES, **kw) -> str:
    t0 = time.perf_counter()
    table = markdown(spectral_rows(sizes=sizes, real=real, updates=updates, **kw))
    storage = root_storage_rows(sizes)
    vq = vq_root_rows(256 if 256 in sizes else sizes[0])
    decay, ef = kw.get("stat_decay", 0.0), kw.get("ef_decay", 0.9)
    return (
        "Inverse 4th root error of each variant (NRE % / AE degrees; lower is better) after\n"
        f"{updates} statistics updates with the matrix (stat_decay={decay:g}; CQ+EF: ef_decay="
        f"{ef:g}).\nVQ: roots by coupled Newton, as Paper B's code. Paper B: warm-started from "
        "the exact\neigenvectors, as its Table 1. CQ+EF snapshot: the root of the factor stored "
        f"last;\naveraged: the root of the mean factor stored over the last "
        f"{min(AVERAGE, updates)} updates.\n\n"
        f"{table}\n\nVQ's root: coupled Newton against eigh with the negative eigenvalues of the\n"
        f"dequantized matrix clamped to 0 (one update, stat_decay=0)\n\n{vq}\n\n"
        "Storing the inverse root in 4 bits: full rows vs lower triangle\n\n"
        f"{storage}\n\n({time.perf_counter() - t0:.0f} s)"
    )
