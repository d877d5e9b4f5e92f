"""The hand-written kernels against what they replace: median ms per call, and the speed-up.

- nearest-code quantization: ``qshampoo.quant.codebooks.nearest_codes`` (a lookup table)
  against ``torch.bucketize`` on the codebook's midpoints (the same codes, exactly);
- Cholesky: ``qshampoo.linalg.cholesky_lower`` (recursive, LAPACK below ``BASE_ORDER``)
  against ``torch.linalg.cholesky_ex``;
- ``C C^T`` of a lower-triangular ``C``: ``qshampoo.linalg.lower_gram`` against ``C @ C.mT``;
- inverse 4th root: ``root_method="eigh"`` (the default) against ``"newton"`` (coupled Newton);
- the finiteness check of every factorisation: ``qshampoo.linalg.all_finite`` (two
  reductions) against ``torch.isfinite(x).all()``;
- decoding the packed 4-bit codes of an n x n strict lower triangle (two values per byte):
  gathering each byte's value pair as one int64 against gathering rows of the (256, 2) table;
- the absmax of each 64-entry chunk (the quantizer's scales): ``abs`` then ``amax`` against one
  ``aminmax`` reduction (the same values, exactly).

    PYTHONPATH=. python benchmarks/kernels.py [--sizes 256 512 1024 2048] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qshampoo.linalg import all_finite, cholesky_lower, lower_gram
from qshampoo.quant.blockwise import _byte_values
from qshampoo.quant.codebooks import codebook_byte_table, codebook_midpoints, nearest_codes
from qshampoo.roots import inverse_root


def median_ms(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms per call")
    gen = torch.Generator().manual_seed(0)
    mids = codebook_midpoints("linear2", 4)
    # column names (what, ours, theirs); `calls` below holds the two functions of each, in order
    pairs = [
        ("nearest codes", "LUT", "bucketize"),
        ("Cholesky", "recursive", "LAPACK"),
        ("C C^T", "lower_gram", "C @ C^T"),
        ("root", "eigh", "Newton"),
        ("finite check", "all_finite", "isfinite.all"),
        ("4-bit decode", "int64 gather", "row gather"),
        ("chunk absmax", "abs.amax", "aminmax"),
    ]
    table = codebook_byte_table("linear2")

    def rows(packed: torch.Tensor) -> torch.Tensor:  # the (256, 2) table's rows, then flattened
        return table.index_select(0, packed.to(torch.int32)).view(-1)

    head = " | ".join(f"{what}: {ours} | {theirs} | speed-up" for what, ours, theirs in pairs)
    print(f"| n | {head} |")
    print("|---|" + "---|" * 3 * len(pairs))
    for n in args.sizes:
        y = torch.rand(n, n, generator=gen) * 2 - 1
        assert torch.equal(nearest_codes(y, "linear2", 4), torch.bucketize(y, mids).to(torch.uint8))
        g = torch.randn(n, n, generator=gen)
        A = g @ g.T / n + torch.eye(n)
        C = torch.linalg.cholesky(A)
        packed = torch.randint(0, 256, (n * (n - 1) // 4,), dtype=torch.uint8, generator=gen)
        assert torch.equal(_byte_values(packed, table), rows(packed))
        chunks = g.view(-1, 64)
        lo, hi = torch.aminmax(chunks, dim=-1)
        assert torch.equal(chunks.abs().amax(-1), torch.maximum(hi, -lo))
        calls = [
            (lambda x: nearest_codes(x, "linear2", 4), y),
            (lambda x: torch.bucketize(x, mids, out_int32=True), y),
            (cholesky_lower, A),
            (torch.linalg.cholesky_ex, A),
            (lower_gram, C),
            (lambda x: x @ x.mT, C),
            (lambda x: inverse_root(x, 4, 1e-6, "eigh"), A),
            (lambda x: inverse_root(x, 4, 1e-6, "newton"), A),
            (lambda x: all_finite(x[None]), C),
            (lambda x: torch.isfinite(x[None]).flatten(1).all(1), C),
            (lambda x: _byte_values(x, table), packed),
            (rows, packed),
            (lambda x: x.abs().amax(-1), chunks),
            (lambda x: torch.aminmax(x, dim=-1), chunks),
        ]
        t = [median_ms(fn, x, args.repeats) for fn, x in calls]
        cells = [
            f"{ours:.2f} | {theirs:.2f} | {theirs / ours:.1f}×"
            for ours, theirs in zip(t[::2], t[1::2], strict=True)
        ]
        print(f"| {n} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
