"""Safe optimizer checkpoints: a checksum of each parameter's state, and a structural check.

``Shampoo.state_dict()`` stores, next to the usual ``state`` and ``param_groups``, a
``format_version`` and one ``checksums`` entry per parameter state; ``load_state_dict`` checks
both, then compares every stored value with what this optimizer would create for that
parameter (the same keys, tensor shapes and dtypes, the same variant and layout) and rejects
non-finite tensors. A checkpoint from another variant, another model, another parameter order,
or one whose bytes were damaged, gives a ``ValueError`` that says what differs, never a
silently wrong state.

The checksum is a position-weighted sum of the bytes of every tensor (any change of a single
byte changes it) and the ``repr`` of every plain value, combined with CRC-32. It is computed
on the tensors' own device, in chunks, with one host synchronisation per parameter.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
from torch import Tensor

#: bumped when the layout of the optimizer state changes; checked by ``load_state_dict``
#: (2: low-bit triangles are stored tile by tile, ``qshampoo.quant.triangle``)
STATE_FORMAT_VERSION = 2
#: bytes summed per chunk (bounds the temporary int64 buffer to 8x this)
_CHUNK = 1 << 22
#: weights cycle below this prime, so every weight is in [1, 65521]
_MOD = 65521
#: stored values compared for equality, not only for type (they define the layout)
EXACT_KEYS = ("kind", "order", "layout")


def load_file(f, map_location=None) -> Any:
    """``torch.load(f, weights_only=True)`` with a clear error for a damaged or truncated file.

    Raises ``ValueError`` naming the file when it cannot be read back as a torch checkpoint
    (``torch.load`` itself reports an empty file as a bare ``EOFError``).
    """
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        name = f if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__") else "the checkpoint"
        raise ValueError(
            f"cannot read {name}: it is truncated, damaged, or not a torch checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unexpected end'})"
        ) from e


def with_checksums(state_dict: dict) -> dict:
    """``state_dict`` with its ``checksums`` (re)computed, for a state dict built or changed
    from ``Shampoo.state_dict()`` on purpose (``qshampoo.distributed`` does this)."""
    checksums = {
        "state": {k: state_checksum(v) for k, v in state_dict["state"].items()},
        "param_groups": [state_checksum(g) for g in state_dict["param_groups"]],
    }
    return {**state_dict, "checksums": checksums}


def state_checksum(obj: Any) -> int:
    """A checksum of a (nested) parameter state: tensors' bytes and plain values."""
    parts: list[str] = []
    sums: list[Tensor] = []
    _walk(obj, parts, sums)
    if sums:
        values = torch.stack([s.cpu() for s in sums]).tolist()
        parts.append(",".join(str(v) for v in values))
    return zlib.crc32("|".join(parts).encode())


def _walk(obj: Any, parts: list[str], sums: list[Tensor]) -> None:
    if isinstance(obj, Tensor):
        if hasattr(obj, "to_local"):  # a DTensor: this rank's shard
            obj = obj.to_local()
        parts.append(f"T{tuple(obj.shape)}{obj.dtype}")
        sums.append(_byte_sum(obj))
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            parts.append(f"K{k!r}")
            _walk(obj[k], parts, sums)
    elif isinstance(obj, (list, tuple)):
        parts.append(f"L{len(obj)}")
        for v in obj:
            _walk(v, parts, sums)
    else:
        parts.append(f"V{obj!r}")


def _byte_sum(t: Tensor) -> Tensor:
    """Position-weighted sum of a tensor's bytes, as an int64 0-d tensor on its device."""
    flat = t.detach().reshape(-1)
    if flat.numel() > 0 and flat.stride(0) != 1:  # e.g. a size-1 tensor with an odd stride
        flat = torch.empty(flat.shape, dtype=flat.dtype, device=flat.device).copy_(flat)
    b = flat.view(torch.uint8)
    total = torch.zeros((), dtype=torch.int64, device=b.device)
    for start in range(0, b.numel(), _CHUNK):
        chunk = b[start : start + _CHUNK].long()
        w = torch.arange(start, start + chunk.numel(), device=b.device) % _MOD + 1
        total += (chunk * w).sum()
    return total


def compare_state(saved: Any, expected: Any, path: str, key: Any = None) -> None:
    """Raise ValueError where ``saved`` differs in structure from ``expected``.

    Dicts must have the same keys, lists the same length, tensors the same shape and dtype
    (and finite values, if floating point); ``EXACT_KEYS`` must be equal; other plain values
    must be of a compatible type (counters non-negative ints, damping/errors finite or None).
    """
    if key in EXACT_KEYS:
        if saved != expected:
            raise ValueError(f"{path} is {saved!r}, this optimizer has {expected!r}")
        return
    if isinstance(expected, dict):
        if not isinstance(saved, dict):
            raise ValueError(f"{path} should be a dict, got {type(saved).__name__}")
        missing = [k for k in expected if k not in saved]
        extra = [k for k in saved if k not in expected]
        if missing or extra:
            raise ValueError(
                f"{path} has keys {sorted(map(str, saved))}, this optimizer expects "
                f"{sorted(map(str, expected))} (missing {missing}, unexpected {extra})"
            )
        for k in expected:
            compare_state(saved[k], expected[k], f"{path}[{k!r}]", k)
    elif isinstance(expected, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(expected):
            n = len(saved) if isinstance(saved, (list, tuple)) else type(saved).__name__
            raise ValueError(f"{path} should be a list of {len(expected)} entries, got {n}")
        for i, (s, e) in enumerate(zip(saved, expected, strict=True)):
            compare_state(s, e, f"{path}[{i}]")
    elif isinstance(expected, Tensor):
        if not isinstance(saved, Tensor):
            raise ValueError(f"{path} should be a tensor, got {type(saved).__name__}")
        if tuple(saved.shape) != tuple(expected.shape) or saved.dtype != expected.dtype:
            raise ValueError(
                f"{path} is a {saved.dtype} tensor of shape {tuple(saved.shape)}, this optimizer "
                f"expects {expected.dtype} of shape {tuple(expected.shape)}"
            )
        if saved.is_floating_point() and not bool(torch.isfinite(saved).all()):
            raise ValueError(f"{path} holds inf/NaN values")
    elif isinstance(expected, (bool, str)):
        if saved != expected:
            raise ValueError(f"{path} is {saved!r}, this optimizer has {expected!r}")
    elif isinstance(expected, int):
        if not isinstance(saved, int) or isinstance(saved, bool) or saved < 0:
            raise ValueError(f"{path} should be a non-negative int, got {saved!r}")
    elif expected is None or isinstance(expected, float):
        if isinstance(saved, Tensor) and saved.numel() == 1:
            saved = saved.item()
        if saved is not None and (
            not isinstance(saved, (int, float))
            or isinstance(saved, bool)
            or not math.isfinite(saved)
        ):
            raise ValueError(f"{path} should be a finite number or None, got {saved!r}")
