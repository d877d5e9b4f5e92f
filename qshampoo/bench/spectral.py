"""``qshampoo spectral``: the inverse-root error table of every variant.

Synthetic PD matrices (two spectra, several orders and condition numbers) and real
preconditioner statistics captured from a short 32-bit Shampoo run on the digits MLP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..metrics import exact_inverse_root, root_errors, synthetic_pd, variant_root

VARIANTS = ("none", "naive", "eigen", "cholesky", "cholesky_ef")
#: error feedback only shows over repeated updates; its row is taken after this many
EF_UPDATES = 20


@dataclass
class Row:
    matrix: str
    n: int
    errors: dict[str, tuple[float, float]]  # variant -> (NRE, AE degrees)


def variant_errors(A: torch.Tensor, variants=VARIANTS, **kw) -> dict[str, tuple[float, float]]:
    ref = exact_inverse_root(A)
    out = {}
    for v in variants:
        updates = EF_UPDATES if v == "cholesky_ef" else 1
        out[v] = root_errors(ref, variant_root(A, v, updates=updates, **kw))
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


def markdown(rows: list[Row], variants=VARIANTS) -> str:
    head = "| matrix | n | " + " | ".join(f"{v} NRE % / AE °" for v in variants) + " |"
    sep = "|---|---|" + "---|" * len(variants)
    lines = [head, sep]
    for r in rows:
        cells = [f"{100 * r.errors[v][0]:.1f} / {r.errors[v][1]:.1f}" for v in variants]
        lines.append(f"| {r.matrix} | {r.n} | " + " | ".join(cells) + " |")
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


def run(sizes=(64, 256, 1024), real: bool = True, **kw) -> str:
    t0 = time.perf_counter()
    table = markdown(spectral_rows(sizes=sizes, real=real, **kw))
    storage = root_storage_rows(sizes)
    return (
        "Inverse 4th root error of each variant (NRE % / AE degrees; lower is better).\n"
        f"cholesky_ef is measured after {EF_UPDATES} updates with the same statistics.\n\n"
        f"{table}\n\nStoring the inverse root in 4 bits: full rows vs lower triangle\n\n"
        f"{storage}\n\n({time.perf_counter() - t0:.0f} s)"
    )
