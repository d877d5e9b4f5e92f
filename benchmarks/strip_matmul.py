"""Does multiplying by row strips of the left operand give the same bits as one matmul?

Decoding a preconditioner root a strip of rows at a time (and multiplying each strip) keeps the
optimizer bit-identical only if torch's CPU kernel gives the rows of ``L @ G`` from ``L[r0:r1] @
G`` exactly, and the columns of ``G @ R`` from ``G @ R[c0:c1].T`` for symmetric ``R``. This
prints, for the block shapes of the papers' models and a few small ones, which strip heights do.

    python benchmarks/strip_matmul.py
"""

from __future__ import annotations

import torch

SHAPES = [(1200, 384), (384, 1536), (384, 1152), (1152, 384), (384, 384), (336, 384)]
SHAPES += [(130, 70), (70, 130), (64, 27), (96, 96), (200, 300)]
STRIPS = (256, 128, 64, 32, 1)


def main() -> None:
    torch.set_num_threads(1)
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


if __name__ == "__main__":
    main()
