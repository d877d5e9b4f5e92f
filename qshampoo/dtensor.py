"""FSDP2's sharded parameters (DTensor), seen from the optimizer: local shards and their names.

Under FSDP2 each rank runs Shampoo on its local shard as if the shard were the parameter; these
helpers get at the shard, name it, and wrap tensors shaped like it as DTensors laid out like the
parameter (so ``torch.distributed.checkpoint`` can reshard the base optimizer's state).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import Tensor


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor, without importing ``torch.distributed.tensor`` (~1 s):
    until something has imported it, nothing can be a DTensor."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def local(t: Tensor) -> Tensor:
    """The local tensor of a DTensor (sharing its storage), or ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def like_param(p: Tensor, t: Tensor) -> Tensor:
    """Wrap ``t``, a tensor shaped like ``local(p)``, as a DTensor laid out like ``p``."""
    if not is_dtensor(p):
        return t
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        t, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
    )


def shard_key(p: Tensor) -> str:
    """Name of the shard of ``p`` this rank holds: its mesh coordinate along sharded dims.

    Ranks that hold the same shard (replicas, as in HSDP) get the same name, so a distributed
    checkpoint stores their identical preconditioner state once.
    """
    coord = p.device_mesh.get_coordinate() or []
    parts = [str(c) for c, pl in zip(coord, p.placements, strict=True) if pl.is_shard()]
    return "shard" + "_".join(parts)


def is_shard_state(stored: Any) -> bool:
    """Whether a stored ``state["precond"]`` is per-shard (FSDP2): ``{"shard<k>": blocks}``."""
    return isinstance(stored, dict) and any(k.startswith("shard") for k in stored)
