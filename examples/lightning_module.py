"""qshampoo in PyTorch Lightning: return it (and its scheduler) from ``configure_optimizers``.

A small MLP learns scikit-learn's digits. The recipe:

    def configure_optimizers(self):
        opt = qshampoo.Shampoo4bit(self.parameters(), lr=...)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=..., total_steps=...)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

Lightning's gradient clipping (``gradient_clip_val``), mixed precision (``precision=
"bf16-mixed"``) and checkpoints (``trainer.fit(..., ckpt_path=...)``, which restore the
optimizer through its ``load_state_dict``) work unchanged.

    pip install lightning        # or: pip install pytorch-lightning
    python examples/lightning_module.py --steps 200
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import qshampoo

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl


def digits_loader(batch_size: int = 32, seed: int = 0, shuffle: bool = True):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    data = torch.utils.data.TensorDataset(x, y)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=g)


class DigitsModule(pl.LightningModule):
    def __init__(self, lr: float = 3e-3, steps: int = 200, quant: str = "cholesky_ef"):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 10)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, prog_bar=False)
        return loss

    def configure_optimizers(self):
        opt = qshampoo.Shampoo(
            self.parameters(),
            lr=self.hparams.lr,
            quant=self.hparams.quant,
            stat_interval=5,
            root_interval=20,
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=self.hparams.steps
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def make_trainer(out: str, steps: int, precision: str = "32-true", save_every: int = 0):
    callbacks = []
    if save_every:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=out, every_n_train_steps=save_every, save_top_k=-1, save_last=False
            )
        )
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        precision=precision,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=bool(save_every),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=out,
        deterministic=True,
    )


@torch.no_grad()
def accuracy(module: DigitsModule) -> float:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    return (module.net(x).argmax(-1) == torch.tensor(d.target)).float().mean().item()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--quant", default="cholesky_ef")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--precision", default="32-true", help='e.g. "bf16-mixed"')
    ap.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps")
    ap.add_argument("--resume", default=None, help="a .ckpt file to resume from")
    ap.add_argument("--no-shuffle", action="store_true", help="same batch order every epoch")
    ap.add_argument("--seed", type=int, default=0, help="initialisation (and data order)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="pl-qshampoo-")
    pl.seed_everything(args.seed, workers=True, verbose=False)
    module = DigitsModule(lr=args.lr, steps=args.steps, quant=args.quant)
    trainer = make_trainer(out, args.steps, args.precision, args.save_every)
    trainer.fit(module, digits_loader(shuffle=not args.no_shuffle), ckpt_path=args.resume)
    opt = trainer.optimizers[0]
    report = {
        "accuracy": accuracy(module),
        "diagnostics": opt.diagnostics(),
        "module": module,
        "out": out,
    }
    print(
        f"quant={args.quant} steps={args.steps} precision={args.precision}: accuracy "
        f"{report['accuracy']:.3f}, skipped steps {report['diagnostics']['nonfinite_steps']}, "
        f"root failures {report['diagnostics']['root_failures']}"
    )
    return report


if __name__ == "__main__":
    main()
