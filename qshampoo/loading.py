"""What ``Shampoo.load_state_dict`` checks before it changes anything, and how it fits the
loaded preconditioner blocks to this process.

:func:`check_state_dict` refuses, with a ``ValueError`` that names the difference, a state dict
of another format, another number or layout of param groups (``qshampoo.layout.LAYOUT_KEYS``),
invalid hyperparameters, a failed checksum (``qshampoo.checkpoint``), or a parameter state
whose structure differs from what this optimizer would create for that parameter (compared
against a *skeleton*: a fresh state made of meta tensors, cached by shape and layout).
The store (``PreconditionerStore.place_loaded``) then keeps the blocks this process holds,
still before anything is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import BASES
from .checkpoint import STATE_FORMAT_VERSION, compare_state, state_checksum
from .dtensor import is_dtensor
from .factors import FactorConfig, make_factor
from .layout import LAYOUT_KEYS, factor_config, layout_of, param_blocking
from .precision import AUTO_BITS
from .store import new_blocks, pair_state
from .validation import validate_group

#: skeletons of new parameter states by (shape, layout), for load_state_dict's checks
_SKELETONS: dict[tuple, dict] = {}


def check_state_dict(
    state_dict: Any, param_groups: list[dict]
) -> tuple[list[dict], list[tuple[Any, Tensor]]]:
    """Every check ``load_state_dict`` makes before it changes anything.

    Returns the param groups as they will be after loading (``param_groups`` with the
    checkpoint's hyperparameters) and, for each parameter in order, its id in the checkpoint
    with the parameter. Raises ``TypeError`` or ``ValueError``; anything else a damaged state
    trips over is reported as a ``ValueError``.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    version = state_dict.get("format_version")
    if version is None and _looks_like_ours(state_dict):
        # torch.distributed.checkpoint.state_dict keeps only "state" and "param_groups"
        version = STATE_FORMAT_VERSION
    if version == 1:
        raise ValueError(
            "this state dict was saved by qshampoo 0.1 (format_version=1), which stored the "
            "low-bit triangles row by row; this version stores them tile by tile (format "
            f"{STATE_FORMAT_VERSION}). Resume with qshampoo 0.1, or start a fresh optimizer "
            "state (the model's weights load as usual)"
        )
    if version != STATE_FORMAT_VERSION:
        raise ValueError(
            f"this is not a qshampoo.Shampoo state dict of format {STATE_FORMAT_VERSION} "
            f"(format_version={version!r})"
        )
    saved, groups = state_dict.get("state"), state_dict.get("param_groups")
    if not isinstance(saved, dict) or not isinstance(groups, list):
        raise ValueError("state dict lacks its 'state' dict or its 'param_groups' list")
    try:
        return _check_loadable(state_dict, saved, groups, param_groups)
    except (ValueError, TypeError):
        raise
    except Exception as e:  # anything else a damaged state could trip over
        raise ValueError(
            f"malformed optimizer state dict ({type(e).__name__}: {e}); the checkpoint is "
            "corrupted or was not written by qshampoo.Shampoo.state_dict()"
        ) from e


def copy_to(obj: Any, device: torch.device | None) -> Any:
    """A copy of a (nested) state with every tensor on ``device`` (None: where it is; dtypes
    kept)."""
    if isinstance(obj, Tensor):
        return obj.detach().to(device=device, copy=True)
    if isinstance(obj, dict):
        return {k: copy_to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [copy_to(v, device) for v in obj]
    return obj


def _looks_like_ours(state_dict: dict) -> bool:
    groups = state_dict.get("param_groups") or []
    states = (state_dict.get("state") or {}).values()
    return (
        bool(groups)
        and all("quant" in g and "stat_decay" in g for g in groups)
        and all("layout" in st for st in states)
    )


def _check_loadable(state_dict: dict, saved: dict, groups: list, param_groups: list[dict]):
    merged = _check_groups(groups, param_groups)
    _check_checksums(saved, groups, state_dict.get("checksums"))
    ids = [i for g in groups for i in g["params"]]
    unknown = [k for k in saved if k not in set(ids)]
    if unknown:
        raise ValueError(
            f"state dict has state for parameter ids {unknown[:5]} that no param group lists"
        )
    owners = [(p, g) for g, mine in zip(merged, param_groups, strict=True) for p in mine["params"]]
    for n, (i, (p, group)) in enumerate(zip(ids, owners, strict=True)):
        if i in saved:
            _check_param_state(saved[i], p, group, n)
    return merged, [(i, p) for i, (p, _) in zip(ids, owners, strict=True)]


def _check_groups(groups: list, param_groups: list[dict]) -> list[dict]:
    """The groups as they will be after loading; raise if they do not fit this optimizer."""
    if len(groups) != len(param_groups):
        raise ValueError(
            f"the checkpoint has {len(groups)} param groups, this optimizer "
            f"{len(param_groups)}: it was saved for another model or configuration"
        )
    merged = []
    for g, (mine, theirs) in enumerate(zip(param_groups, groups, strict=True)):
        if not isinstance(theirs, dict) or not isinstance(theirs.get("params"), list):
            raise ValueError(f"param group {g} of the checkpoint is malformed")
        if len(theirs["params"]) != len(mine["params"]):
            raise ValueError(
                f"param group {g} has {len(theirs['params'])} parameters in the checkpoint, "
                f"{len(mine['params'])} here: it was saved for another model"
            )
        group = {**mine, **theirs, "params": mine["params"]}
        try:
            validate_group(group)
        except ValueError as e:
            raise ValueError(f"param group {g} of the checkpoint: {e}") from None
        changed = [k for k in LAYOUT_KEYS if group[k] != mine[k]]
        if changed:
            diff = ", ".join(f"{k}={group[k]!r} (this optimizer: {mine[k]!r})" for k in changed)
            raise ValueError(
                f"param group {g} of the checkpoint was saved with {diff}. These decide how "
                "the state is stored: create the optimizer with the checkpoint's values to "
                "resume from it, or start a fresh optimizer state."
            )
        merged.append(group)
    return merged


def _check_checksums(saved: dict, groups: list, checksums: Any) -> None:
    if checksums is None:  # a state edited on purpose may drop its checksums
        return
    edited = "(To load a state you edited on purpose, delete its 'checksums'.)"
    if (
        not isinstance(checksums, dict)
        or not isinstance(checksums.get("state"), dict)
        or set(checksums["state"]) != set(saved)
        or not isinstance(checksums.get("param_groups"), list)
        or len(checksums["param_groups"]) != len(groups)
    ):
        raise ValueError(
            "the checkpoint's checksums do not list the same parameters and param groups as "
            f"its state: it is corrupted or truncated. {edited}"
        )
    for g, (group, checksum) in enumerate(zip(groups, checksums["param_groups"], strict=True)):
        if state_checksum(group) != checksum:
            raise ValueError(
                f"param group {g} of the checkpoint does not match its checksum: the "
                f"checkpoint is corrupted, or was changed after state_dict(). {edited}"
            )
    for k, v in saved.items():
        if state_checksum(v) != checksums["state"][k]:
            raise ValueError(
                f"the optimizer state of parameter id {k} does not match its checksum: the "
                "checkpoint is corrupted, or the state changed between state_dict() and "
                f"saving. {edited}"
            )


def _check_param_state(saved: Any, p: Tensor, group: dict, n: int) -> None:
    if is_dtensor(p):  # FSDP2 shards: checked by held_blocks (docs/distributed.md)
        return
    expected = _skeleton(p, group)
    where = f"parameter #{n} (shape {tuple(p.shape)}): state"
    if not isinstance(saved, dict):
        raise ValueError(f"{where} should be a dict, got {type(saved).__name__}")
    if isinstance(saved.get("nonfinite_steps"), int):  # an int: saved by earlier code
        expected["nonfinite_steps"] = 0
    base = saved.get("base")
    if group["base"] == "sgd" and isinstance(base, dict) and "momentum_buffer" in base:
        expected["base"]["momentum_buffer"] = torch.empty(
            p.shape, dtype=torch.float32, device="meta"
        )
    if "precond" in expected:
        stored = saved.get("precond", None)
        if stored is None:  # saved without preconditioners: fresh ones are made
            saved = {k: v for k, v in saved.items() if k != "precond"}
            del expected["precond"]
        elif isinstance(stored, dict):  # one rank's blocks, {"<block index>": ...}
            blocks = expected["precond"]
            bad = [k for k in stored if not (str(k).isdigit() and int(k) < len(blocks))]
            if bad:
                raise ValueError(
                    f"{where}['precond'] names blocks {bad}; this parameter has "
                    f"{len(blocks)} blocks"
                )
            expected["precond"] = {k: blocks[int(k)] for k in stored}
        if "precond" in expected:
            _fit_factor_bits(stored, expected["precond"], group, where)
    try:
        compare_state(saved, expected, where)
        skipped = saved["nonfinite_steps"]
        if isinstance(skipped, Tensor) and skipped.device.type != "meta" and int(skipped) < 0:
            raise ValueError(f"{where}['nonfinite_steps'] should be non-negative, got {skipped}")
    except ValueError as e:
        raise ValueError(
            f"{e}. The checkpoint does not fit this optimizer: it was saved for another "
            "model or parameter order, with other settings, or it is corrupted."
        ) from None


def _fit_factor_bits(stored: Any, expected: Any, group: dict, where: str) -> None:
    """Give each expected low-bit factor the width its saved counterpart has: under
    ``bits="auto"`` any of ``AUTO_BITS`` (the skeleton is rebuilt at that width), otherwise
    exactly the group's ``bits``."""
    pairs = (
        [(k, stored.get(k), expected[k]) for k in expected]
        if isinstance(expected, dict) and isinstance(stored, dict)
        else list(zip(range(len(expected)), stored, expected, strict=False))
        if isinstance(stored, list)
        else []
    )
    for b, saved_block, block in pairs:
        if not isinstance(saved_block, dict) or not isinstance(block, dict):
            continue  # compare_state explains the mismatch
        for side in ("L", "R"):
            want, got = block.get(side), saved_block.get(side)
            if not isinstance(want, dict) or not isinstance(got, dict) or "bits" not in want:
                continue
            bits = got.get("bits")
            allowed = AUTO_BITS if group["bits"] == "auto" else (group["bits"],)
            if isinstance(bits, bool) or bits not in allowed:
                raise ValueError(
                    f"{where}['precond'][{b!r}][{side!r}]['bits'] is {bits!r}; this "
                    f"optimizer (bits={group['bits']!r}) stores its factors with "
                    f"{' or '.join(map(str, allowed))} bits"
                )
            if bits != want["bits"]:
                block[side] = _factor_skeleton(want["kind"], want["order"], group, bits)


def _skeleton(p: Tensor, group: dict) -> dict:
    """The state a new parameter like ``p`` would get, as meta tensors (shapes, dtypes),
    with every preconditioner block (a list)."""
    key = (tuple(p.shape), p.dtype, tuple(group[k] for k in LAYOUT_KEYS))
    skeleton = _SKELETONS.get(key)
    if skeleton is None:
        try:  # no memory, no work
            skeleton = _fresh_state(p, group, torch.device("meta"))
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel
            skeleton = _to_meta(_fresh_state(p, group, torch.device("cpu")))
        if len(_SKELETONS) > 1024:
            _SKELETONS.clear()
        _SKELETONS[key] = skeleton
    return copy_to(skeleton, torch.device("meta"))


def _fresh_state(p: Tensor, group: dict, device: torch.device) -> dict:
    """The state a (non-DTensor) parameter starts with, every block included, on ``device``."""
    init = BASES[group["base"]][0]
    st = {
        "step": 0,
        "nonfinite_steps": torch.zeros((), dtype=torch.int64, device=device),
        "layout": layout_of(group),
        "base": init(torch.empty(p.shape, dtype=p.dtype, device=device)),
    }
    blocking = param_blocking(p, group)
    if blocking is not None:
        blocks = new_blocks(
            blocking,
            group["quant"],
            factor_config(group),
            device,
            group["matrix_eps"],
            group["min_quant_numel"],
        )
        st["precond"] = [pair_state(b) for b in blocks]
    return st


def _factor_skeleton(kind: str, order: int, group: dict, bits: int) -> dict:
    """The state of a new ``kind`` factor of ``order`` at ``bits``, as meta tensors."""
    config = factor_config(group)
    config = FactorConfig(bits, config.block_size, config.codebook, config.adaptive)
    key = ("factor", kind, order, bits, config)
    skeleton = _SKELETONS.get(key)
    if skeleton is None:
        # min_quant_numel 0: the saved factor is of this (quantized) kind whatever its order
        try:
            made = make_factor(kind, order, config, torch.device("meta"), 1.0, 0).state
        except (NotImplementedError, RuntimeError):
            made = _to_meta(make_factor(kind, order, config, torch.device("cpu"), 1.0, 0).state)
        skeleton = _SKELETONS[key] = made
    return copy_to(skeleton, torch.device("meta"))


def _to_meta(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return torch.empty(obj.shape, dtype=obj.dtype, device="meta")
    if isinstance(obj, dict):
        return {k: _to_meta(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_meta(v) for v in obj]
    return obj
