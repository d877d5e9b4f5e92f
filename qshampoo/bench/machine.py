"""The machine and library versions a report records."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path


def _proc(path: str, field: str) -> str | None:
    """The value of the first line of ``path`` that starts with ``field`` (Linux ``/proc``)."""
    try:
        with open(path) as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(field)), None)
    except OSError:
        return None


def machine_info() -> dict:
    import torch

    memory = _proc("/proc/meminfo", "MemTotal:")  # "24000000 kB"
    info = {
        "cpu": _proc("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": int(memory.split()[0]) * 1024 if memory else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_bytes": p.total_memory})
        info["cuda"] = torch.version.cuda
    return info


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict:
    out = {"python": platform.python_version()}
    libraries = ("qshampoo", "torch", "numpy", "scikit-learn", "matplotlib", "tqdm", "scipy")
    for dist in libraries + ("torchao", "bitsandbytes", "pytorch_optimizer"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if dist in ("torch", "qshampoo"):  # importable from a checkout without metadata
                out[dist] = getattr(__import__(dist), "__version__", None)
    out["qshampoo_git"] = _git_commit()
    return out
