"""The decision report from PyTorch Lightning: ``qshampoo.bench.LightningCallback``.

One ``Trainer.fit`` per optimizer and seed, each with the callback, into one folder; every run
rewrites ``report.md`` / ``report.html`` from all the runs there. A small MLP learns
scikit-learn's digits:

    pip install lightning        # or: pip install pytorch-lightning
    python examples/recorder_lightning.py --out report/lightning --steps 120
"""

from __future__ import annotations

import argparse

import torch

import qshampoo
from qshampoo.bench import LightningCallback

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl


def loaders(seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    data = torch.utils.data.TensorDataset(
        torch.tensor(d.data, dtype=torch.float32) / 16.0, torch.tensor(d.target)
    )
    train, test = (
        torch.utils.data.Subset(data, range(1400)),
        torch.utils.data.Subset(data, range(1400, len(data))),
    )
    g = torch.Generator().manual_seed(seed)
    return (
        torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, generator=g),
        torch.utils.data.DataLoader(test, batch_size=512),
    )


class Digits(pl.LightningModule):
    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 10)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_accuracy", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        if self.name == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=3e-3)
        quant = {"shampoo": "none", "shampoo4bit": "cholesky_ef"}[self.name]
        return qshampoo.Shampoo(
            self.parameters(),
            lr=3e-3,
            quant=quant,
            stat_interval=3,
            root_interval=15,
            min_quant_numel=1024,
        )


def train(out: str, name: str, seed: int, steps: int, lang: str = "en") -> None:
    pl.seed_everything(seed, verbose=False)
    train_loader, test_loader = loaders(seed)
    callback = LightningCallback(
        out, optimizer=name, seed=seed, metric="val_accuracy", percent=True, lang=lang
    )
    trainer = pl.Trainer(
        max_steps=steps,
        val_check_interval=max(1, steps // 5),
        check_val_every_n_epoch=None,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Digits(name), train_loader, test_loader)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="report/lightning")
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
