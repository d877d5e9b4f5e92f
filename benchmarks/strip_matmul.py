"""Does multiplying by row strips of the left operand give the same bits as one matmul?

Decoding a preconditioner root a strip of rows at a time (and multiplying each strip) keeps the
optimizer bit-identical only if torch's CPU kernel gives the rows of ``L @ G`` from ``L[r0:r1] @
G`` exactly, and the columns of ``G @ R`` from ``G @ R[c0:c1].T`` for symmetric ``R``. This
prints, for the block shapes of the papers' models and a few small ones, which strip heights do.

    python benchmarks/strip_matmul.py

The second table checks the strips qshampoo decodes (``QuantizedFactor.multiply_roots``:
whole tile rows, the last short one merged into the strip before it) against the whole root's
one ``bmm``, for 4-bit roots of block sizes 64 and 32, one and three roots in a batch, strips
of ``quant.blockwise.STRIP_BYTES`` (the default) and of one tile row (the smallest).
"""

from __future__ import annotations

import itertools

import torch

SHAPES = [(1200, 384), (384, 1536), (384, 1152), (1152, 384), (384, 384), (336, 384)]
SHAPES += [(130, 70), (70, 130), (64, 27), (96, 96), (200, 300)]
STRIPS = (256, 128, 64, 32, 1)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    print("| n | m | strip rows | rows of L G | columns of G R |")
    print("|---|---|---|---|---|")
    for n, m in SHAPES:
        L = torch.randn(n, n, generator=g)
        L = L + L.T
        G = torch.randn(n, m, generator=g)
        R = torch.randn(m, m, generator=g)
        R = R + R.T
        left = torch.bmm(L[None], G[None])[0]
        right = torch.bmm(G[None], R[None])[0]
        for h in STRIPS:
            rows = torch.cat([L[i : i + h] @ G for i in range(0, n, h)])
            cols = torch.cat([G @ R[i : i + h].T for i in range(0, m, h)], 1)
            same = [
                "same" if torch.equal(a, b) else "differ" for a, b in ((rows, left), (cols, right))
            ]
            print(f"| {n} | {m} | {h} | {same[0]} | {same[1]} |")


def optimizer_strips() -> None:
    from unittest import mock

    from qshampoo.factors import FactorConfig
    from qshampoo.factors.cholesky import CholeskyFactor
    from qshampoo.quant import blockwise

    g = torch.Generator().manual_seed(0)
    print("\n| n | m | block size | roots | strip bytes | strips | L G | G R |")
    print("|---|---|---|---|---|---|---|---|")
    for (n, m), s, B, nbytes in itertools.product(
        SHAPES, (64, 32), (1, 3), (blockwise.STRIP_BYTES, 1)
    ):
        config = FactorConfig(4, s)
        roots = []
        for order in (n, m):
            fs = [CholeskyFactor.new(order, config, torch.device("cpu"), 1e-6) for _ in range(B)]
            for f in fs:
                x = torch.randn(order, order, generator=g)
                f.store_root(x + x.T)
            roots.append(fs)
        G = torch.randn(B, n, m, generator=g)
        with mock.patch.object(blockwise, "STRIP_BYTES", nbytes):
            rows = blockwise.strip_rows(n, s), blockwise.strip_rows(m, s)
            if rows == (None, None):
                continue
            got = [CholeskyFactor.multiply_roots(roots[i], G, i == 0) for i in (0, 1)]
        dense = [CholeskyFactor.dense_roots(fs) for fs in roots]
        want = [torch.bmm(dense[0], G), torch.bmm(G, dense[1])]
        same = ["same" if torch.equal(a, b) else "differ" for a, b in zip(got, want, strict=True)]
        tallest = "/".join("whole" if r is None else f"<= {r} rows" for r in rows)
        print(f"| {n} | {m} | {s} | {B} | {nbytes} | {tallest} | {same[0]} | {same[1]} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
    optimizer_strips()
