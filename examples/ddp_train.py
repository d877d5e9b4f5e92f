"""Train an MLP on scikit-learn's digits with qshampoo under DDP or FSDP2, and print what each
rank's optimizer state holds.

    torchrun --nproc_per_node 2 examples/ddp_train.py                   # DDP, 4-bit (CQ+EF)
    torchrun --nproc_per_node 2 examples/ddp_train.py --distributed off # every rank does all
    torchrun --nproc_per_node 2 examples/ddp_train.py --quant none      # 32-bit Shampoo
    torchrun --nproc_per_node 2 examples/ddp_train.py --fsdp            # FSDP2 (fully_shard)

Uses gloo on CPU and NCCL when CUDA is available. Each rank gets its share of every batch;
the global batch is --batch.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

import qshampoo


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quant", default="cholesky_ef")
    ap.add_argument("--distributed", choices=["auto", "off"], default="auto")
    ap.add_argument("--fsdp", action="store_true", help="shard the model with FSDP2")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128, help="global batch size")
    ap.add_argument("--lr", type=float, default=1e-3)
    return ap.parse_args()


def main() -> None:
    args = parse()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda") if cuda else torch.device("cpu")

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32, device=device) / 16
    y = torch.tensor(d.target, device=device)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g).to(device)
    train, test = perm[:1400], perm[1400:]

    torch.manual_seed(0)  # the same initial weights on every rank
    h = args.hidden
    model = torch.nn.Sequential(
        torch.nn.Linear(64, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU(),
        torch.nn.Linear(h, 10),
    ).to(device)  # fmt: skip
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        net = model
    else:
        net = torch.nn.parallel.DistributedDataParallel(model)

    opt = qshampoo.Shampoo(
        net.parameters(),
        lr=args.lr,
        quant=args.quant,
        stat_interval=5,
        root_interval=25,
        distributed=None if args.distributed == "auto" else False,
    )

    t0 = time.perf_counter()
    for _ in range(args.steps):
        idx = train[torch.randint(0, len(train), (args.batch,), generator=g).to(device)]
        idx = idx.chunk(world)[rank]  # this rank's share of the global batch
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0

    with torch.no_grad():
        acc = (net(x[test]).argmax(1) == y[test]).float().mean().item()
    reports = [None] * world
    dist.all_gather_object(reports, opt.memory_report())
    if rank == 0:
        mode = "FSDP2" if args.fsdp else f"DDP, distributed={args.distributed}"
        print(f"{mode}, quant={args.quant}, world={world}, hidden={h}, steps={args.steps}")
        print(f"test accuracy {acc:.3f}, {seconds:.1f} s")
        print(f"{'rank':>4} {'preconditioners':>16} {'base_state':>11} {'total':>11}  (bytes)")
        for r, rep in enumerate(reports):
            print(
                f"{r:>4} {rep['preconditioners']:>16,} {rep['base_state']:>11,} {rep['total']:>11,}"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
