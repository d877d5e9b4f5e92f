"""The machine and library versions a report records."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Machine and versions
# --------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpus": [],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_bytes"] = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
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
    for dist in (
        "qshampoo",
        "torch",
        "numpy",
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "torchao",
        "bitsandbytes",
        "pytorch_optimizer",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if dist in ("torch", "qshampoo"):  # importable from a checkout without metadata
                module = __import__(dist)
                out[dist] = getattr(module, "__version__", None)
    out["qshampoo_git"] = _git_commit()
    return out
