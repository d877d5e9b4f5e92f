"""What a Shampoo process holds beyond its optimizer state after a step, and why (CPU, Linux).

``benchmarks/peak_memory.py`` finds every Shampoo process holding 8-20 MiB more than the AdamW
process plus its own state. This script splits that up, in two parts:

1. *Live tensors.* After one step of the optimizer on the model, the bytes of every storage
   reachable from a live tensor (``gc``) above those before the optimizer existed, against
   ``memory_report()["total"]`` (everything the state holds): the difference is what the
   optimizer keeps alive besides its state (caches, copies), and what it is.
2. *First use of a kernel.* In a fresh process per kernel (after warming up the allocator with
   one small operator), what the first call of each kind of kernel the step runs keeps once its
   result is freed: glibc heap in use (``mallinfo2``: a library's own buffers) and file pages
   (``RssFile``: the code pages of the library brought in).

    python benchmarks/held_memory.py                      # ViT-Small, Shampoo4bit(paper=True)
    python benchmarks/held_memory.py --optimizer none --phase due
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

import torch

import qshampoo
from qshampoo.bench.paper_models import PAPER_MODELS
from qshampoo.peak import process_memory

MiB = 2**20
KINDS = {
    "none": lambda params, **kw: qshampoo.Shampoo(params, quant="none", **kw),
    "default": qshampoo.Shampoo4bit,
    "paper": lambda params, **kw: qshampoo.Shampoo4bit(params, paper=True, **kw),
}


def live_storages() -> dict[int, int]:
    """``{data pointer: bytes}`` of every storage a live tensor (one ``gc`` sees) holds."""
    gc.collect()
    out = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta:
            storage = obj.untyped_storage()
            out[storage.data_ptr()] = storage.nbytes()
    return out


def live_tensors(model_name: str, optimizer: str, phase: str) -> dict:
    torch.set_num_threads(1)
    builder, base, _ = PAPER_MODELS[model_name]
    torch.manual_seed(0)
    model = builder()
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).mul_(1e-3)
    before = live_storages()
    interval = 1 if phase == "due" else 10**9
    kw = dict(base=base, stat_interval=interval, root_interval=interval)
    opt = KINDS[optimizer](params, **kw)
    for _ in range(2):
        opt.step()
    after = live_storages()
    new = {ptr: n for ptr, n in after.items() if ptr not in before}
    from qshampoo.quant import triangle

    cache = sum(
        t.untyped_storage().nbytes()
        for v in triangle._CACHE.values()
        for t in (v if isinstance(v, tuple) else (v,))
    )
    return {
        "live_new": sum(new.values()),
        "storages": len(new),
        "state_total": opt.memory_report()["total"],
        "triangle_index_cache": cache,
    }


#: the kinds of kernel a step runs, on ViT-Small's sizes (order 384, blocks 384 x 1536)
def _kernels() -> dict:
    x = torch.randn(4, 384, 384)
    y = torch.randn(4, 384, 1536)
    spd = x[0] @ x[0].T + 384 * torch.eye(384)
    idx = torch.randint(0, 1000, (100000,))
    return {
        "bmm (preconditioning, grams)": lambda: torch.bmm(x, y),
        "index_select (decoding)": lambda: x.view(-1).index_select(0, idx),
        "cholesky_ex (statistics)": lambda: torch.linalg.cholesky_ex(spd),
        "solve_triangular (statistics)": lambda: torch.linalg.solve_triangular(
            spd.tril(), x[0], upper=False
        ),
        "eigh (roots)": lambda: torch.linalg.eigh(spd),
    }


def first_use(kernel: str) -> dict:
    torch.set_num_threads(1)
    kernels = _kernels()
    torch.zeros(8).add_(1)  # the allocator and the dispatcher, warmed up

    def now():
        gc.collect()
        return process_memory()

    a = now()
    out = kernels[kernel]()
    del out
    b = now()
    return {
        "kernel": kernel,
        "heap_in_use": b["heap_in_use"] - a["heap_in_use"],
        "file": b["file"] - a["file"],
    }


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit-small-cifar100")
    ap.add_argument("--optimizer", default="paper", choices=sorted(KINDS))
    ap.add_argument("--phase", default="idle", choices=("due", "idle"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        what, *rest = args.child
        print(json.dumps(live_tensors(*rest) if what == "live" else first_use(rest[0])))
        return 0
    r = _child(["live", args.model, args.optimizer, args.phase])
    print(
        f"{args.model}, {args.optimizer}, {args.phase} step, after two steps: tensors "
        f"created since the model {r['live_new'] / MiB:.2f} MiB ({r['storages']} storages), "
        f"memory_report()['total'] {r['state_total'] / MiB:.2f} MiB: "
        f"{(r['live_new'] - r['state_total']) / 1024:.0f} KiB beyond the state, of which the "
        f"triangle layout's index cache {r['triangle_index_cache'] / 1024:.0f} KiB\n"
    )
    print("| first call of | heap in use after (MiB) | file pages after (MiB) |")
    print("|---|---|---|")
    for kernel in _kernels():
        k = _child(["first", kernel])
        print(f"| {kernel} | {k['heap_in_use'] / MiB:.2f} | {k['file'] / MiB:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
