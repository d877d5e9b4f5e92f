"""Dispatched operators and host synchronisations per ``step()``: 32-bit against 4-bit Shampoo.

On a GPU each dispatched aten operator is at least one kernel launch and each host
synchronisation stalls the launch queue, so these counts are the GPU proxy a CPU can measure
exactly (``qshampoo.dispatch.DispatchCounter``). For ``--layers`` same-shaped linear layers of
``--width`` (each a weight, preconditioned on both sides, and a bias), one step in each of the
three states of ``step_time.py``: *plain* (nothing due), *stats* (statistics due), *roots*
(statistics and roots due). Each as the CPU runs it, and as an accelerator does: on the CPU the
gradients' finiteness is read at every step (a read of memory, free) and a non-finite
gradient's skip decided on the host; elsewhere a plain step decides it on the device, with no
read (``Shampoo(nonfinite="skip")``, docs/robustness.md), run here on the CPU by switching the
choice (``qshampoo.optimizer._reads_are_free``).

    python benchmarks/dispatch_count.py                          # width 256, 1 and 4 layers
    python benchmarks/dispatch_count.py --layers 1,3,8 --where   # + where the 4-bit step's go
    python benchmarks/dispatch_count.py --triton                 # + the Triton kernels' path

``--triton`` adds Shampoo4bit as an accelerator runs it with the Triton kernels
(``QSHAMPOO_TRITON``, ``qshampoo.kernels``): each launch counts as one operator
(``qshampoo.dispatch.kernel_launch``). Without CUDA the kernels run in Triton's interpreter
(``TRITON_INTERPRET=1``, set here): slow (minutes), but the count is the same. With ``--where``
the breakdowns are of that path.

``--where`` lists, for the 4-bit statistics and roots steps, the operators by module and the
lines of qshampoo that dispatch the most, and every synchronisation with its line.
"""

from __future__ import annotations

import argparse
import os
import sys
from unittest import mock

import torch
from torch import nn

import qshampoo
import qshampoo.optimizer
from qshampoo import kernels
from qshampoo.dispatch import DispatchCounter

STATES = {"plain": 3, "stats": 10, "roots": 50}  # the step counter each state's step reaches
VARIANTS = {"32-bit (none)": "none", "Shampoo4bit (cholesky_ef)": "cholesky_ef"}
PATHS = {"CPU": False, "accelerator": True}  # name -> the skip decided on the device


def counted(
    quant: str,
    width: int,
    layers: int,
    state: str,
    where: bool = False,
    on_device=False,
    triton=False,
):
    """The ``DispatchCounter`` of one ``step()`` in ``state`` (state built, and that state's
    step run once, before), as the CPU runs it or, ``on_device``, as an accelerator does;
    ``triton``: with the Triton kernels too."""
    if triton:
        with kernels.using("on"):
            return counted(quant, width, layers, state, where, on_device=True)
    if on_device:
        with mock.patch.object(qshampoo.optimizer, "_reads_are_free", lambda device: False):
            return counted(quant, width, layers, state, where)
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    net(torch.randn(32, width)).square().mean().backward()
    opt = qshampoo.Shampoo(net.parameters(), quant=quant, stat_interval=10, root_interval=50)
    opt.step()
    for warm in (True, False):  # the first such step builds the caches (codebook tables)
        for p in net.parameters():
            opt.state[p]["step"] = STATES[state] - 1
        if warm:
            opt.step()
            continue
        with DispatchCounter(where=where) as count:
            opt.step()
    return count


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", default="1,4", help="numbers of same-shaped layers")
    ap.add_argument("--where", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--triton", action="store_true", help="add the Triton kernels' path")
    args = ap.parse_args(argv)
    if args.triton and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # read when triton is first imported (below)
    layer_counts = [int(x) for x in args.layers.split(",")]
    print(f"Command: `python {' '.join(sys.argv)}` (torch {torch.__version__}; counts are exact)")
    print(
        f"\nOperators (all / without views) / host syncs per step(), "
        f"{args.width}x{args.width} linear layers\n"
    )
    head = " | ".join(f"{s} x{n}" for n in layer_counts for s in STATES)
    print(f"| optimizer | {head} |")
    print("|---|" + "---|" * (len(STATES) * len(layer_counts)))
    for label, quant in VARIANTS.items():
        for path, on_device in PATHS.items():
            cells = []
            for n in layer_counts:
                for s in STATES:
                    c = counted(quant, args.width, n, s, on_device=on_device)
                    cells.append(f"{c.ops} / {c.kernels} / {c.syncs}")
            print(f"| {label}, {path} | " + " | ".join(cells) + " |")
    if args.triton:
        cells = []
        for n in layer_counts:
            for s in STATES:
                c = counted("cholesky_ef", args.width, n, s, triton=True)
                cells.append(f"{c.ops} / {c.kernels} / {c.syncs}")
        label = next(k for k, v in VARIANTS.items() if v == "cholesky_ef")
        print(f"| {label}, accelerator + Triton | " + " | ".join(cells) + " |")
    if not args.where:
        return
    for state in ("stats", "roots"):
        c = counted(
            "cholesky_ef", args.width, layer_counts[-1], state, where=True, triton=args.triton
        )
        print(
            f"\n### Shampoo4bit, {state} step, {layer_counts[-1]} layers: {c.ops} operators "
            f"({c.kernels} without views)"
        )
        print("\nBy module:\n")
        for mod, k in c.by_module.most_common():
            print(f"- {mod}: {k}")
        print(f"\nTop {args.top} lines:\n")
        for line, k in c.by_line.most_common(args.top):
            print(f"- {k:5d}  {line}")
        print(f"\nHost synchronisations ({c.syncs}):\n")
        for line, k in c.where_syncs.most_common():
            print(f"- {k:5d}  {line}")


if __name__ == "__main__":
    main()
