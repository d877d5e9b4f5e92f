"""Smoke test of an installed qshampoo wheel, as a user gets it from `pip install qshampoo`.

Run by `make dist-check` with the python of a fresh venv holding only the wheel and its
dependencies (no extras), from outside the source tree: ``python smoke_installed.py DIST_DIR``.
It checks the built files, an optimizer step, the command line, and that a command needing the
``bench`` extra says so in one line.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"smoke test FAILED: {what}")
    print(f"ok: {what}")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def check_dist(dist: Path, version: str) -> None:
    (wheel,) = dist.glob(f"qshampoo-{version}-py3-none-any.whl")
    (sdist,) = dist.glob(f"qshampoo-{version}.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    check("qshampoo/py.typed" in names, "the wheel has py.typed")
    check(any(re.search(r"\.dist-info/licenses/LICENSE$", n) for n in names), "and the LICENSE")
    others = [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]
    check(not others, "and nothing from outside the package")
    sdist_names = tarfile.open(sdist).getnames()
    for f in ("LICENSE", "README.md", "pyproject.toml"):
        check(f"qshampoo-{version}/{f}" in sdist_names, f"the sdist has {f}")


def main() -> None:
    import torch

    import qshampoo

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    check(Path(qshampoo.__file__).resolve().is_relative_to(site), "qshampoo imports from the wheel")
    check_dist(Path(sys.argv[1]), qshampoo.__version__)

    from importlib.metadata import metadata

    meta = metadata("qshampoo")
    check(meta["Version"] == qshampoo.__version__, "one version: metadata == __version__")
    check(meta["License-Expression"] == "Apache-2.0", "License-Expression: Apache-2.0")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 80), torch.nn.ReLU(), torch.nn.Linear(80, 4))
    opt = qshampoo.Shampoo4bit(
        model.parameters(), lr=1e-2, stat_interval=1, root_interval=1, min_quant_numel=0
    )
    x, y = torch.randn(64, 96), torch.randint(0, 4, (64,))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    check(losses[-1] < losses[0], f"the loss falls: {losses[0]:.3f} -> {losses[-1]:.3f}")
    check(opt.memory_report()["preconditioners"] > 0, "it holds 4-bit preconditioners")
    nre, _ = qshampoo.metrics.inverse_root_error(torch.eye(64) + 0.1 * torch.ones(64, 64))
    check(nre >= 0, "qshampoo.metrics without importing it by name")

    exe = Path(sys.executable).parent / "qshampoo"
    out = run(str(exe), "--version")
    version = f"qshampoo {qshampoo.__version__} (torch {torch.__version__})"
    check(out.returncode == 0 and out.stdout.strip() == version, f"qshampoo --version: {version}")
    out = run(str(exe), "memory", "--models", "vgg19-cifar100")
    check(out.returncode == 0 and "vgg19-cifar100" in out.stdout, "qshampoo memory")

    # Without the `bench` extra the harness is refused in one line that names it.
    missing = [m for m in ("matplotlib", "tqdm", "sklearn") if _absent(m)]
    if missing:
        out = run(str(exe), "bench", "--steps", "1")
        lines = out.stderr.strip().splitlines()
        check(out.returncode == 2 and len(lines) == 1, f"qshampoo bench without extras: {lines}")
        check("pip install 'qshampoo[bench]'" in lines[0], "the line names the extra")
    print("smoke test passed")


def _absent(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is None


if __name__ == "__main__":
    main()
