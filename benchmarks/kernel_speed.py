"""Time the Triton kernels (qshampoo/kernels/) against the torch operators they replace.

    PYTHONPATH=. python benchmarks/kernel_speed.py [--device cuda] [--sizes 256 1024 2048 4096]
        [--batch 4] [--bits 4 8] [--repeats 20]

For each order n and width, times each operation through the torch operators
(``kernels.using("off")``) and through the kernels (``"on"``), reports the medians of
``--repeats`` synchronized calls in ms and their ratio, and checks that both give identical
results (``same``). Operations, on a batch of ``--batch`` random n x n matrices, block size 64,
codebook linear2:

- ``encode tril``: the quantizer of the statistics and root steps (unpacked codes + scales);
- ``decode tril``: the strict lower factors a CQ statistics step decodes (``decode``);
- ``roots``: the symmetric roots with their exact diagonals, decoded at every step
  (``dequantize_symmetric``);
- ``quantize full`` / ``dequantize full``: one matrix in the "full" layout (eigen, naive);
- ``roots @ G``: the left preconditioning product of a square block, decoding the roots then
  ``bmm`` against ``kernels.root_matmul`` (decoding inside the matmul; not used by the
  optimizer yet). Its ``same`` column is the largest difference relative to the largest entry:
  the sums run in another order.

Prints a markdown table; writes nothing. Meant for a GPU (``benchmarks/gpu_check.sh`` runs it).
On a CPU the kernels run only in Triton's interpreter: ``TRITON_INTERPRET=1 ... --device cpu
--sizes 40 --repeats 1`` checks that the script works and times nothing worth reading.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_speed import median_ms  # noqa: E402  (a sibling script)

from qshampoo import kernels  # noqa: E402
from qshampoo.quant import decode, dequantize, dequantize_symmetric, encode, quantize
from qshampoo.quant.codebooks import codebook


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "codes"):  # a QuantizedTensor
        return _same((a.codes, a.scales), (b.codes, b.scales))
    return torch.equal(a, b)


def _agreement(got, ref) -> str:
    return f"{((got - ref).abs().max() / ref.abs().max()).item():.1e}"


def operations(x: torch.Tensor, bits: int, block_size: int) -> dict:
    """name -> a call, for the batch ``x`` ``(B, n, n)``."""
    n = x.shape[-1]
    kw = dict(block_size=block_size, codebook="linear2", bits=bits)
    codes, scales = encode(x, layout="tril", **kw)
    roots = [quantize(m, layout="tril", exact_diagonal=True, **kw) for m in x]
    full = quantize(x[0], **kw)
    out = torch.empty_like(x)
    G = torch.randn_like(x)
    stacked = [torch.stack([getattr(q, a) for q in roots]) for a in ("codes", "scales", "diag")]
    cb = codebook("linear2", bits, x.device)

    def roots_times_g():
        if kernels.enabled(x):
            return kernels.root_matmul(*stacked, G, block_size=block_size, codebook=cb, bits=bits)
        return torch.bmm(dequantize_symmetric(roots, out=out), G)

    return {
        "encode tril": lambda: encode(x, layout="tril", **kw),
        "decode tril": lambda: decode(codes, scales, (n, n), layout="tril", **kw),
        "roots": lambda: dequantize_symmetric(roots, out=out).clone(),
        "quantize full": lambda: quantize(x[0], **kw),
        "dequantize full": lambda: dequantize(full),
        "roots @ G": roots_times_g,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    if not kernels.available():
        raise SystemExit("triton is not importable: nothing to compare")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    import triton

    print(
        f"device: {device} ({where or platform.machine()}), torch {torch.__version__}, "
        f"triton {triton.__version__}, batch {args.batch}, block {args.block_size}, "
        f"median of {args.repeats} calls"
    )
    print()
    print("| n | bits | operation | torch ms | kernel ms | kernel / torch | same |")
    print("|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for n in args.sizes:
        x = torch.randn(args.batch, n, n, generator=gen).to(device)
        for bits in args.bits:
            with kernels.using("off"):
                ops = operations(x, bits, args.block_size)
            for name, fn in ops.items():
                with kernels.using("off"):
                    ref = fn()
                    t_torch = median_ms(fn, device, args.repeats)
                with kernels.using("on"):
                    got = fn()
                    t_kernel = median_ms(fn, device, args.repeats)
                same = _agreement(got, ref) if name == "roots @ G" else _same(got, ref)
                same = {True: "yes", False: "NO"}.get(same, same)
                print(
                    f"| {n} | {bits} | {name} | {t_torch:.3f} | {t_kernel:.3f} | "
                    f"{t_kernel / t_torch:.2f} | {same} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
