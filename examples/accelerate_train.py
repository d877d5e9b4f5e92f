"""qshampoo with Hugging Face ``accelerate``: build it like any optimizer, then ``prepare`` it.

A small MLP learns scikit-learn's digits. The recipe:

    accelerator = Accelerator()
    opt = qshampoo.Shampoo4bit(model.parameters(), lr=..., stat_interval=..., root_interval=...)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    ...
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); sched.step(); opt.zero_grad()

``accelerator.save_state(folder)`` saves the optimizer through its own ``state_dict()`` and
``accelerator.load_state(folder)`` restores it through ``load_state_dict()``. Launched on several
processes (DDP), the optimizer splits its preconditioner blocks across the ranks by itself
(``docs/distributed.md``); nothing else changes.

    pip install accelerate scikit-learn
    python examples/accelerate_train.py --steps 200
    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_train.py  # 2 GPUs
    # two processes on the CPU (gloo):
    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_train.py --cpu
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import qshampoo


def digits() -> torch.utils.data.TensorDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    return torch.utils.data.TensorDataset(x, torch.tensor(d.target))


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64), torch.nn.GELU(),
        torch.nn.Linear(64, 10),
    )  # fmt: skip


def linear_warmup_decay(opt, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def accuracy(model: torch.nn.Module) -> float:
    x, y = digits().tensors
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


def main(argv=None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--save-steps", type=int, default=0, help="save_state every N steps")
    ap.add_argument("--resume", default=None, help="a folder written by --save-steps")
    ap.add_argument("--quant", default="cholesky_ef")
    ap.add_argument("--min-quant-numel", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0, help="data order")
    ap.add_argument("--model-seed", type=int, default=0, help="initialisation")
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="accelerate-qshampoo-"))

    # a seedable sampler: the shuffle of epoch e is the same on every run, so a resumed run
    # sees the batches the uninterrupted one saw
    accelerator = Accelerator(
        cpu=args.cpu, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True)
    )
    model = make_model(args.model_seed)
    opt = qshampoo.Shampoo(
        model.parameters(),
        lr=args.lr,
        weight_decay=0.01,
        quant=args.quant,
        min_quant_numel=args.min_quant_numel,
        stat_interval=5,
        root_interval=20,
    )
    # accelerate steps a prepared scheduler once per process at every optimizer step (each
    # process's batch counts as a step), hence the total in scheduler steps
    n = accelerator.num_processes
    sched = linear_warmup_decay(opt, warmup=n * args.steps // 10, total=n * args.steps)
    # the data order: the seedable sampler takes its seed from torch's global generator
    torch.manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(digits(), batch_size=32, shuffle=True)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)

    step = 0
    if args.resume:
        accelerator.load_state(args.resume)
        step = json.loads((Path(args.resume) / "step.json").read_text())["step"]
    model.train()
    while step < args.steps:
        epoch, done = divmod(step, len(loader))
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, done) if done else loader
        for x, y in batches:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if args.save_steps and step % args.save_steps == 0:
                folder = out / f"step-{step}"
                accelerator.save_state(folder)
                if accelerator.is_main_process:
                    (folder / "step.json").write_text(json.dumps({"step": step}))
            if step == args.steps:
                break

    shampoo = opt.optimizer  # the qshampoo optimizer inside accelerate's wrapper
    model = accelerator.unwrap_model(model)
    report = {
        "accuracy": accuracy(model),
        "diagnostics": shampoo.diagnostics(),
        "memory": shampoo.memory_report(),
        "model": model,
        "out": out,
        "rank": accelerator.process_index,
        "world": n,
    }
    if accelerator.is_main_process:
        print(
            f"quant={args.quant} steps={args.steps} processes={n}: accuracy "
            f"{report['accuracy']:.3f}, preconditioners {report['memory']['preconditioners']} "
            f"bytes on this rank, skipped steps {report['diagnostics']['nonfinite_steps']}, "
            f"root failures {report['diagnostics']['root_failures']}"
        )
    accelerator.end_training()
    return report


if __name__ == "__main__":
    main()
