"""Time block-wise quantize / dequantize of n x n matrices and print a table.

    PYTHONPATH=. python benchmarks/quant_speed.py [--device cpu|cuda] [--bits 4] [--repeats 10]

Prints the median wall time of each call in milliseconds. For the ``tril`` layout (how the
inverse roots are stored) it also times ``dequantize_symmetric``, the full symmetric matrix the
optimizer multiplies with, eager and ``compiled=True`` (the optimizer's ``compile`` option; the
first compiled call of each shape compiles and is not timed). With ``QSHAMPOO_TRITON=auto``
on CUDA, where triton imports, the calls run the Triton kernels (qshampoo/kernels/; then
``compiled`` changes nothing); ``benchmarks/kernel_speed.py`` times both side by side.
``strips ms``: the same matrix decoded a strip of rows at a time (``symmetric_row_strips``, what
preconditioning does with roots of more than ``quant.blockwise.STRIP_BYTES``; ``-`` where the
matrix is decoded whole).
Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from qshampoo import kernels
from qshampoo.quant import dequantize, quantize
from qshampoo.quant.blockwise import dequantize_symmetric, symmetric_row_strips


def median_ms(fn, device: torch.device, repeats: int) -> float:
    """Median ms of ``fn()`` over ``repeats`` calls after one warm-up call (which builds
    cached tables, or compiles a kernel), synchronising with a CUDA device around each."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--codebook", default="linear2")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {device} ({where or platform.machine()}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, bits {args.bits}, block {args.block_size}, "
        f"codebook {args.codebook}, Triton kernels "
        f"{'on' if kernels.enabled(torch.empty(0, device=device)) else 'off'}"
    )
    print("exact_diagonal=True; median of --repeats calls")
    print(
        f"{'n':>6} {'layout':>6} {'quantize ms':>12} {'dequantize ms':>14} {'bytes':>10} "
        f"{'symmetric ms':>13} {'compiled ms':>12} {'strips ms':>10}"
    )
    gen = torch.Generator().manual_seed(0)
    for n in args.sizes:
        x = torch.randn(n, n, generator=gen).to(device)
        for layout in ("full", "tril"):
            kw = dict(
                layout=layout,
                exact_diagonal=True,
                bits=args.bits,
                block_size=args.block_size,
                codebook=args.codebook,
            )
            q = quantize(x, **kw)
            tq = median_ms(lambda x=x, kw=kw: quantize(x, **kw), device, args.repeats)
            td = median_ms(lambda q=q: dequantize(q), device, args.repeats)
            line = f"{n:>6} {layout:>6} {tq:>12.2f} {td:>14.2f} {q.nbytes:>10}"
            if layout == "tril":
                ts, tc = (
                    median_ms(
                        lambda q=q, c=c: dequantize_symmetric(q, compiled=c), device, args.repeats
                    )
                    for c in (False, True)
                )
                line += f" {ts:>13.2f} {tc:>12.2f}"
                if symmetric_row_strips([q]) is None:
                    line += f" {'-':>10}"
                else:
                    tr = median_ms(lambda q=q: _all_strips(q), device, args.repeats)
                    line += f" {tr:>10.2f}"
            print(line)


def _all_strips(q) -> None:
    for _ in symmetric_row_strips([q]):
        pass


if __name__ == "__main__":
    main()
