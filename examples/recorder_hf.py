"""The decision report from a Hugging Face ``Trainer``: ``qshampoo.bench.HFCallback``.

One ``Trainer`` run per optimizer and seed, each with the callback, into one folder; every run
rewrites ``report.md`` / ``report.html`` from all the runs there. A small classifier learns
scikit-learn's digits (any model whose ``forward`` returns a ``loss`` works the same way):

    pip install transformers accelerate
    python examples/recorder_hf.py --out report/hf --steps 120
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

import qshampoo
from qshampoo.bench import HFCallback


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    rows = [{"x": xi, "labels": yi} for xi, yi in zip(x, torch.tensor(d.target), strict=True)]
    return rows[:1400], rows[1400:]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 10)
        )

    def forward(self, x, labels=None):
        logits = self.body(x)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def accuracy(pred) -> dict:
    return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}


def train(out: str, name: str, seed: int, steps: int, lang: str = "en") -> None:
    from transformers import Trainer, TrainingArguments

    train_rows, test_rows = digits()
    torch.manual_seed(seed)
    model = Net()
    if name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    else:
        quant = {"shampoo": "none", "shampoo4bit": "cholesky_ef"}[name]
        opt = qshampoo.Shampoo(
            model.parameters(),
            lr=3e-3,
            quant=quant,
            stat_interval=3,
            root_interval=15,
            min_quant_numel=1024,
        )
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-recorder-"),
        max_steps=steps,
        per_device_train_batch_size=64,
        logging_steps=1,  # one training loss per step for the report's stability measures
        eval_strategy="steps",
        eval_steps=max(1, steps // 5),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
    )
    callback = HFCallback(
        out, optimizer=name, seed=seed, metric="eval_accuracy", percent=True, lang=lang
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=test_rows,
        optimizers=(opt, None),
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    trainer.train()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="report/hf")
    ap.add_argument("--optimizers", default="adamw,shampoo,shampoo4bit")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lang", default="en", choices=["en", "ja"])
    args = ap.parse_args(argv)
    for name in args.optimizers.split(","):
        for seed in range(args.seeds):
            train(args.out, name, seed, args.steps, args.lang)
    print(f"report: {args.out}/report.md")


if __name__ == "__main__":
    main()
