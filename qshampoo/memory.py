"""Optimizer-state bytes from shapes alone: the formulas ``memory_report()`` must equal.

Per factor of order ``n`` (``N = n(n-1)/2`` strict-lower entries, ``b`` bits, block size ``s``,
``S_full = n * ceil(n/s)`` and ``S_tril = sum_{i<n} ceil(i/s)`` fp32 chunk scales):

    none          statistics 4n^2                                  roots 4n^2
    naive         statistics ceil(n^2 b/8) + 4 S_full + 4n          roots R
    eigen         statistics ceil(n^2 b/8) + 4 S_full + 4n          roots R
    cholesky      statistics ceil(N b/8) + 4 S_tril + 4n            roots R
    cholesky_ef   statistics ceil(2N b/8) + 8 S_tril + 4n           roots R
    where R = ceil(N b/8) + 4 S_tril + 4n   (strict lower triangle + exact diagonal)

(+4n for naive is its exact diagonal, for eigen its eigenvalues, for Cholesky its diagonal.)
Quantized factors also keep 4 bytes of ``quant_error`` (Cholesky: +4 bytes of ``cholesky_damping``),
reported as ``diagnostics``; under ``bits="auto"`` each quantized factor has its own ``b`` (4 or 8)
and keeps 4 more bytes, its precision signal (``qshampoo.precision``), and a ``cholesky_ef``
factor in 8 bits is stored as ``cholesky`` (no error state). Factors with
``n^2 < min_quant_numel`` are stored as ``none``.
The base optimizer keeps 8 bytes per parameter element (AdamW) or 4 (SGD with momentum).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .blocking import DEFAULT_MAX_FACTOR_RATIO, Blocking
from .quant import num_chunks, packed_numel


def factor_bytes(
    quant: str,
    n: int,
    *,
    bits: int | str = 4,
    block_size: int = 64,
    min_quant_numel: int = 4096,
    adaptive: bool = False,
) -> dict[str, int]:
    """Bytes of one factor of order ``n``: ``statistics``, ``roots``, ``diagnostics``.

    ``bits="auto"`` is a factor of an adaptive-precision group as it starts (4 bits);
    ``adaptive=True`` with ``bits`` 4 or 8 is such a factor at that width.
    """
    if bits == "auto":
        bits, adaptive = 4, True
    if quant == "cholesky_ef" and adaptive and bits >= 8:
        quant = "cholesky"  # an adaptive CQ+EF factor drops its error state in 8 bits
    if quant == "none" or n * n < min_quant_numel:
        return {"statistics": 4 * n * n, "roots": 4 * n * n, "diagnostics": 0}
    N = n * (n - 1) // 2
    s_tril = num_chunks((n, n), layout="tril", block_size=block_size)
    s_full = num_chunks((n, n), layout="full", block_size=block_size)
    roots = packed_numel(N, bits) + 4 * s_tril + 4 * n
    if quant in ("naive", "eigen"):
        stats = packed_numel(n * n, bits) + 4 * s_full + 4 * n
        diag = 4
    elif quant == "cholesky":
        stats = packed_numel(N, bits) + 4 * s_tril + 4 * n
        diag = 8
    elif quant == "cholesky_ef":
        stats = packed_numel(2 * N, bits) + 8 * s_tril + 4 * n
        diag = 8
    else:
        raise ValueError(f"unknown quant={quant!r}")
    if adaptive:
        diag += 4  # the precision signal
    return {"statistics": stats, "roots": roots, "diagnostics": diag}


def state_bytes(
    shapes: Iterable[tuple[int, ...]],
    *,
    base: str = "adamw",
    quant: str = "none",
    bits: int | str = 4,
    block_size: int = 64,
    max_preconditioner_dim: int = 1200,
    max_factor_ratio: float | None = DEFAULT_MAX_FACTOR_RATIO,
    min_quant_numel: int = 4096,
    precondition: bool = True,
) -> dict[str, int]:
    """What ``Shampoo(...).memory_report()`` will say once every parameter has stepped.

    ``precondition=False`` gives the base optimizer alone (AdamW or SGD with momentum).
    ``bits="auto"``: every factor at 4 bits, as an adaptive-precision optimizer starts (use
    ``factor_bytes`` per factor for a mix of widths).
    """
    out = dict.fromkeys(("statistics", "roots", "diagnostics", "base_state"), 0)
    per_element = {"adamw": 8, "sgd": 4}[base]
    counters = 0  # each parameter's skip counter, an int64 on its device
    for shape in shapes:
        counters += 8
        out["base_state"] += per_element * math.prod(shape)
        blocking = (
            Blocking.of(tuple(shape), max_preconditioner_dim, max_factor_ratio)
            if precondition
            else None
        )
        for orders in blocking.orders if blocking is not None else ():
            for n in (n for n in orders if n is not None):  # None: a side left out
                fb = factor_bytes(
                    quant, n, bits=bits, block_size=block_size, min_quant_numel=min_quant_numel
                )
                for k, v in fb.items():
                    out[k] += v
    out["preconditioners"] = out["statistics"] + out["roots"] + out["diagnostics"]
    out["total"] = out["preconditioners"] + out["base_state"] + counters
    return out
