"""qshampoo with the Hugging Face ``transformers.Trainer``: give it the class and its keywords.

A small classifier learns scikit-learn's digits (any ``nn.Module`` whose ``forward`` returns a
``loss`` works with the Trainer; a ``transformers`` model is used the same way). The recipe:

    args = TrainingArguments(..., learning_rate=3e-3, weight_decay=0.01,
                             lr_scheduler_type="linear", warmup_steps=...)
    Trainer(model=model, args=args, train_dataset=...,
            optimizer_cls_and_kwargs=(qshampoo.Shampoo4bit,
                                      {"lr": args.learning_rate, "stat_interval": 5,
                                       "root_interval": 20}))

The Trainer builds the optimizer itself, once the model is placed and wrapped (under FSDP it
refuses ``optimizers=(opt, sched)``; under DeepSpeed it drops it for AdamW), from its usual two
param groups (no weight decay on biases and norms, ``args.weight_decay`` on the rest), and the
scheduler from ``args``. Pass ``lr`` among the keywords: the Trainer gives the class only those.
It saves ``optimizer.pt`` / ``scheduler.pt`` with every checkpoint and restores them on
``trainer.train(resume_from_checkpoint=...)``, through the optimizer's own ``state_dict()`` /
``load_state_dict()`` (which checks that the checkpoint fits). Which distributed setups work
(FSDP2, DDP) and which do not (FSDP1, DeepSpeed): docs/robustness.md.

    pip install transformers accelerate scikit-learn
    python examples/hf_trainer.py --steps 200 --out /tmp/hf-qshampoo
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import qshampoo


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    return [{"x": xi, "labels": yi} for xi, yi in zip(x, y, strict=True)]


class DigitsNet(torch.nn.Module):
    """64 -> 128 -> 64 -> 10 MLP returning ``{"loss", "logits"}`` as Trainer expects."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(64, 128),
            torch.nn.LayerNorm(128),
            torch.nn.GELU(),
            torch.nn.Linear(128, 64),
            torch.nn.GELU(),
            torch.nn.Linear(64, 10),
        )

    def forward(self, x, labels=None):
        logits = self.body(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def make_model(seed: int = 0) -> DigitsNet:
    torch.manual_seed(seed)
    return DigitsNet()


def make_trainer(out, *, steps, save_steps, quant, min_quant_numel, lr, seed=0, model_seed=None):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=32,
        learning_rate=lr,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        warmup_steps=steps // 10,
        logging_steps=max(1, steps // 10),
        save_steps=save_steps,
        save_strategy="steps" if save_steps else "no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        max_grad_norm=1.0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    shampoo_kwargs = {
        "lr": args.learning_rate,
        "quant": quant,
        "min_quant_numel": min_quant_numel,
        "stat_interval": 5,
        "root_interval": 20,
    }
    trainer = Trainer(
        model=make_model(seed if model_seed is None else model_seed),
        args=args,
        train_dataset=digits(),
        optimizer_cls_and_kwargs=(qshampoo.Shampoo, shampoo_kwargs),
    )
    return trainer


def shampoo_of(trainer) -> qshampoo.Shampoo:
    """The optimizer the Trainer built (accelerate wraps it once training starts)."""
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)


@torch.no_grad()
def accuracy(model) -> float:
    data = digits()
    x = torch.stack([d["x"] for d in data])
    y = torch.stack([d["labels"] for d in data])
    model.eval()
    return (model(x)["logits"].argmax(-1) == y).float().mean().item()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps")
    ap.add_argument("--resume", default=None, help="a checkpoint folder to resume from")
    ap.add_argument("--quant", default="cholesky_ef")
    ap.add_argument(
        "--min-quant-numel", type=int, default=4096, help="smaller factors stay fp32 (0: none)"
    )
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0, help="data order and initialisation")
    ap.add_argument("--model-seed", type=int, default=None, help="initialisation only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="hf-qshampoo-")
    trainer = make_trainer(
        out,
        steps=args.steps,
        save_steps=args.save_steps,
        quant=args.quant,
        min_quant_numel=args.min_quant_numel,
        lr=args.lr,
        seed=args.seed,
        model_seed=args.model_seed,
    )
    result = trainer.train(resume_from_checkpoint=args.resume)
    model, opt = trainer.model, shampoo_of(trainer)
    assert isinstance(opt, qshampoo.Shampoo)
    report = {
        "train_loss": result.training_loss,
        "accuracy": accuracy(model),
        "diagnostics": opt.diagnostics(),
        "optimizer": opt,
        "model": model,
        "out": out,
    }
    print(
        f"quant={args.quant} steps={args.steps}: mean train loss {result.training_loss:.4f}, "
        f"accuracy {report['accuracy']:.3f}, skipped steps "
        f"{report['diagnostics']['nonfinite_steps']}, root failures "
        f"{report['diagnostics']['root_failures']}"
    )
    return report


if __name__ == "__main__":
    main()
