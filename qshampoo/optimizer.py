"""Shampoo and Shampoo4bit: the torch.optim front end.

One step, for each parameter, reads top to bottom:

    statistics (every stat_interval steps)  ->  roots (every root_interval steps, batched)
    ->  precondition  ->  graft to the gradient's norm  ->  base update (AdamW or SGD)

Tensors with fewer than two non-trivial dimensions, and groups with ``precondition=False``,
skip the first four and go straight to the base optimizer. Hyperparameters are read from the
param group at every step, so LR schedulers and per-group overrides work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .base import BASES
from .blocking import Blocking
from .distributed import (
    is_dtensor,
    is_shard_state,
    like_param,
    local,
    make_sharding,
    shard_key,
)
from .factors import FACTORS, FactorConfig, StepHyper, update_roots
from .preconditioner import ParamPreconditioner, block_list, held_dict
from .quant import CODEBOOK_NAMES, SUPPORTED_BITS
from .roots import ROOT_METHODS

#: bumped when the layout of the optimizer state changes; checked by ``load_state_dict``
STATE_FORMAT_VERSION = 1

#: group keys that decide the layout of the stored state; they cannot change once it exists
_LAYOUT_KEYS = (
    "quant",
    "bits",
    "block_size",
    "codebook",
    "max_preconditioner_dim",
    "min_quant_numel",
    "precondition",
    "base",
)


class Shampoo(Optimizer):
    """Shampoo with per-block Kronecker preconditioners, optionally stored in 4 bits.

    Args:
        params: parameters or param groups (any keyword below can be set per group).
        lr: learning rate of the base optimizer.
        base: ``"adamw"`` (decoupled weight decay) or ``"sgd"`` (momentum, coupled L2).
        betas, eps: AdamW's moment decays and denominator epsilon.
        weight_decay: decoupled (adamw) or L2 added to the grafted direction (sgd).
        momentum, nesterov: SGD's momentum (no dampening) and Nesterov switch.
        maximize: ascend instead of descend.
        stat_decay: EMA decay beta of the statistics ``L, R``.
        matrix_eps: initial statistics ``eps I`` and relative damping of the roots.
        stat_interval: statistics are updated at steps ``k % stat_interval == 0`` (T1).
        root_interval: inverse roots are recomputed at steps ``k % root_interval == 0`` (T2).
        max_preconditioner_dim: matrix dims longer than this are cut into blocks.
        root_method: ``"eigh"`` or ``"newton"``.
        quant: how factors are stored: ``"none"`` (fp32), ``"naive"``, ``"eigen"``,
            ``"cholesky"`` or ``"cholesky_ef"``.
        bits, block_size, codebook: the quantizer (see ``qshampoo.quant``).
        ef_decay: decay of the Cholesky error-feedback state.
        min_quant_numel: factors with fewer elements than this stay fp32.
        precondition: False sends the group's parameters straight to the base optimizer.
        nonfinite: ``"skip"`` a parameter's step when its gradient has inf/NaN (counted in
            ``diagnostics()``; statistics stay clean) or ``"raise"``.
        distributed: split the preconditioner blocks of replicated parameters across the
            ranks of ``process_group`` (each rank keeps and computes only its blocks, and the
            preconditioned blocks are all-gathered). ``None`` (default): on when
            ``torch.distributed`` is initialized with more than one rank; ``False``: every
            rank computes everything. Needs the same gradient on every rank (as under DDP).
            DTensor (FSDP2) parameters are always preconditioned per local shard.
            Optimizer-wide, not per group. See ``docs/distributed.md``.
        process_group: the group to split across (default: the default group).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        base: str = "adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = False,
        maximize: bool = False,
        stat_decay: float = 0.95,
        matrix_eps: float = 1e-6,
        stat_interval: int = 100,
        root_interval: int = 500,
        max_preconditioner_dim: int = 1200,
        root_method: str = "eigh",
        quant: str = "none",
        bits: int = 4,
        block_size: int = 64,
        codebook: str = "linear2",
        ef_decay: float = 0.9,
        min_quant_numel: int = 4096,
        precondition: bool = True,
        nonfinite: str = "skip",
        distributed: bool | None = None,
        process_group: Any = None,
    ):
        defaults = dict(
            lr=lr,
            base=base,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            maximize=maximize,
            stat_decay=stat_decay,
            matrix_eps=matrix_eps,
            stat_interval=stat_interval,
            root_interval=root_interval,
            max_preconditioner_dim=max_preconditioner_dim,
            root_method=root_method,
            quant=quant,
            bits=bits,
            block_size=block_size,
            codebook=codebook,
            ef_decay=ef_decay,
            min_quant_numel=min_quant_numel,
            precondition=precondition,
            nonfinite=nonfinite,
        )
        self._sharding = make_sharding(distributed, process_group)
        self._views: dict[Tensor, tuple[Any, ParamPreconditioner]] = {}
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._views = {}
        self.__dict__.setdefault("_sharding", None)

    # -- param groups -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_group(group)
        for p in group["params"]:
            if p.is_complex():
                raise TypeError(
                    "Shampoo does not support complex parameters; pass torch.view_as_real(p) "
                    "as a real parameter instead"
                )
            if not p.is_floating_point():
                raise TypeError(f"Shampoo needs floating-point parameters, got {p.dtype}")

    # -- the step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._sharding is not None:
            self._sharding.update_plan(self.param_groups)
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Shampoo does not support sparse gradients")
            params.append(p)
            g = local(p.grad).float()
            grads.append(g if not group["maximize"] else -g)
        if not params:
            return
        states = [self._state(p, group) for p in params]
        params, grads, states = self._drop_nonfinite(params, grads, states, group)

        hp = StepHyper(
            group["stat_decay"], group["matrix_eps"], group["ef_decay"], group["root_method"]
        )
        due_roots, pres = [], []
        for p, g, st in zip(params, grads, states, strict=True):
            st["step"] += 1
            pre = self._preconditioner(p, st, group)
            pres.append(pre)
            if pre is None:
                continue
            if st["step"] % group["stat_interval"] == 0:
                pre.update_statistics(g, hp)
            if st["step"] % group["root_interval"] == 0:
                due_roots.extend(pre.factors())
        if due_roots:
            update_roots(due_roots, hp)

        directions = self._precondition(params, grads, pres)
        _, update = BASES[group["base"]]
        kwargs = _base_kwargs(group)
        for p, g, st, d in zip(params, grads, states, directions, strict=True):
            direction = g if d is None else graft(d, g)
            if is_dtensor(p):  # FSDP2: update the local shard and its local state
                base = st["base"]
                view = {k: local(v) for k, v in base.items()}
                update(local(p), direction, view, st["step"], lr=group["lr"], **kwargs)
                base.update({k: like_param(p, v) for k, v in view.items() if k not in base})
            else:
                update(p, direction, st["base"], st["step"], lr=group["lr"], **kwargs)

    def _precondition(self, params, grads, pres) -> list[Tensor | None]:
        """``L_hat G R_hat`` per parameter (None where not preconditioned).

        Parameters whose blocks are split across ranks are done together, in one exchange.
        """
        if self._sharding is None:
            return [
                None if pre is None else pre.precondition(g)
                for g, pre in zip(grads, pres, strict=True)
            ]
        out: list[Tensor | None] = [None] * len(params)
        split = []
        for i, (p, g, pre) in enumerate(zip(params, grads, pres, strict=True)):
            if pre is not None:
                if self._sharding.owners(p) is None:
                    out[i] = pre.precondition(g)
                else:
                    split.append(i)
        if split:
            items = [(params[i], grads[i], pres[i]) for i in split]
            for i, d in zip(split, self._sharding.precondition(items), strict=True):
                out[i] = d
        return out

    def _drop_nonfinite(self, params, grads, states, group):
        """Leave out parameters whose gradient holds inf/NaN (one host sync per group)."""
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).tolist()
        if all(finite):
            return params, grads, states
        bad = [p for p, ok in zip(params, finite, strict=True) if not ok]
        if group["nonfinite"] == "raise":
            shapes = ", ".join(str(tuple(p.shape)) for p in bad)
            raise FloatingPointError(
                f"non-finite gradient in parameter(s) of shape {shapes}; use nonfinite='skip' "
                "to skip such steps, or lower the learning rate / use gradient clipping"
            )
        for st, ok in zip(states, finite, strict=True):
            if not ok:
                st["nonfinite_steps"] += 1
        keep = [i for i, ok in enumerate(finite) if ok]
        return [params[i] for i in keep], [grads[i] for i in keep], [states[i] for i in keep]

    # -- state ------------------------------------------------------------------------------------
    def _state(self, p: Tensor, group: dict[str, Any]) -> dict:
        st = self.state[p]
        if not st:
            init, _ = BASES[group["base"]]
            st["step"] = 0
            st["nonfinite_steps"] = 0
            st["layout"] = {k: group[k] for k in _LAYOUT_KEYS}
            st["base"] = {k: like_param(p, v) for k, v in init(local(p)).items()}
            self._new_preconditioner(p, st, group)
        else:
            changed = [k for k in _LAYOUT_KEYS if st["layout"][k] != group[k]]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} changed after the optimizer state was created; these "
                    "decide how the state is stored. Create a new optimizer to change them."
                )
        return st

    def _new_preconditioner(self, p: Tensor, st: dict, group: dict) -> None:
        """Fresh factors (statistics ``eps I``, roots ``I``) for the blocks this rank holds."""
        blocking = _blocking(p, group)
        if blocking is None:
            return
        pre, stored = ParamPreconditioner.create(
            blocking,
            group["quant"],
            _factor_config(group),
            p.device,
            group["matrix_eps"],
            group["min_quant_numel"],
            held=self._sharding.held(p) if self._sharding is not None else None,
        )
        # a DTensor's shard has its own preconditioner, stored under the shard's name
        st["precond"] = {shard_key(p): stored} if is_dtensor(p) else stored
        self._views[p] = (st["precond"], pre)

    def _preconditioner(self, p: Tensor, st: dict, group: dict) -> ParamPreconditioner | None:
        stored = st.get("precond")
        if stored is None:
            return None
        cached = self._views.get(p)
        if cached is None or cached[0] is not stored:  # e.g. after load_state_dict
            blocks = stored[shard_key(p)] if is_dtensor(p) else stored
            pre = ParamPreconditioner.view(_blocking(p, group), blocks, _factor_config(group))
            self._views[p] = cached = (stored, pre)
        return cached[1]

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state, ``torch.optim`` style.

        With blocks split across ranks (``distributed``), each rank's state dict holds only the
        preconditioner blocks that rank owns, as ``state["precond"] = {"<block index>": ...}``;
        the base-optimizer state is complete on every rank. Under FSDP2 it holds this rank's
        shard. See ``docs/distributed.md``.
        """
        sd = super().state_dict()
        sd["format_version"] = STATE_FORMAT_VERSION
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by ``state_dict()``, keeping the stored dtypes.

        ``torch.optim.Optimizer`` would cast every saved tensor to its parameter's dtype, which
        would turn 4-bit codes into floats under bf16 parameters; here tensors are only moved to
        the parameter's device.
        """
        version = state_dict.get("format_version")
        if version is None and _looks_like_ours(state_dict):
            # torch.distributed.checkpoint.state_dict keeps only "state" and "param_groups"
            version = STATE_FORMAT_VERSION
        if version != STATE_FORMAT_VERSION:
            raise ValueError(
                f"this is not a qshampoo.Shampoo state dict of format {STATE_FORMAT_VERSION} "
                f"(format_version={version!r})"
            )
        saved = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        group_of = {p: g for g in self.param_groups for p in g["params"]}
        self._views.clear()
        if self._sharding is not None:
            self._sharding.update_plan(self.param_groups)
        for i, p in zip(ids, params, strict=True):
            if i in saved:
                st = _copy_to(saved[i], p.device)
                self._fit_loaded_blocks(i, p, st, group_of[p])
                self.state[p] = st

    def _fit_loaded_blocks(self, i: Any, p: Tensor, st: dict, group: dict) -> None:
        """Keep the loaded preconditioner blocks this rank owns; refuse missing ones.

        A state saved without preconditioners (see ``qshampoo.distributed.
        drop_preconditioners``) gets fresh ones: Shampoo restarts them, the rest is kept.
        """
        if st.get("layout") != {k: group[k] for k in _LAYOUT_KEYS}:
            return  # the next step() explains what changed
        stored = st.get("precond")
        if stored is None:
            self._new_preconditioner(p, st, group)
            return
        sharded_state = is_shard_state(stored)
        if is_dtensor(p) or sharded_state:
            if not (is_dtensor(p) and sharded_state and shard_key(p) in stored):
                raise ValueError(
                    f"the state of parameter {i!r} holds preconditioners for "
                    f"{sorted(stored) if sharded_state else 'a plain (not DTensor) parameter'}"
                    f", not for {shard_key(p) if is_dtensor(p) else 'a plain parameter'!r}: "
                    "FSDP2 keeps one preconditioner per local shard, so it loads only into the "
                    "same device mesh and sharding (see docs/distributed.md)"
                )
            return
        held = self._sharding.held(p) if self._sharding is not None else None
        blocks = block_list(stored, len(_blocking(p, group).slices))
        for b, entry in enumerate(blocks):
            if held is not None and b not in held:
                blocks[b] = None  # owned by another rank: do not keep its memory here
            elif not entry:
                raise ValueError(
                    f"the state of parameter {i!r} lacks preconditioner block {b}: it is one "
                    "rank's state_dict() from a distributed run, which holds only that rank's "
                    "blocks. Load per-rank state dicts at the same world size, or save with "
                    "torch.distributed.checkpoint or qshampoo.distributed."
                    "consolidated_state_dict() to load at another world size"
                )
        st["precond"] = blocks if held is None else held_dict(blocks)

    # -- reports ----------------------------------------------------------------------------------
    def memory_report(self) -> dict[str, int]:
        """Bytes held by the optimizer state (``tensor.nbytes`` of every stored tensor).

        ``preconditioners``: all factor state, of which ``statistics`` (L, R in the variant's
        form) and ``roots`` (the inverse roots); the rest of it is ``diagnostics`` (a few
        scalars per factor). ``base_state``: the base optimizer's moments. ``total``: all.
        Under ``torch.distributed``, the bytes this rank holds: its own blocks, or its shard
        under FSDP2 (see ``docs/distributed.md``).
        """
        report = dict.fromkeys(("statistics", "roots", "preconditioners", "base_state"), 0)
        total = 0
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                total += _nbytes(st)
                report["base_state"] += _nbytes(st["base"])
                report["preconditioners"] += _nbytes(st.get("precond"))
                pre = self._preconditioner(p, st, group)
                for f in pre.factors() if pre is not None else ():
                    for k, v in f.nbytes().items():
                        report[k] += v
        report["diagnostics"] = report["preconditioners"] - report["statistics"] - report["roots"]
        report["total"] = total
        return report

    def diagnostics(self) -> dict[str, Any]:
        """Counters a long run should watch: failures, skipped steps, quantization error.

        ``factors`` lists one dict per factor (``param`` index over all groups, ``block``,
        ``side`` "L"/"R", ``kind``, ``order``, ``root_failures``, ``quant_error`` and, per
        variant, ``cholesky_failures``, ``damping``, ``bits``); ``quant_error`` at the top is
        the mean over the quantized factors (None when none is quantized).
        """
        out = {"nonfinite_steps": 0, "root_failures": 0, "cholesky_failures": 0, "factors": []}
        params = [(p, g) for g in self.param_groups for p in g["params"]]
        for index, (p, group) in enumerate(params):
            st = self.state.get(p)
            if not st:
                continue
            out["nonfinite_steps"] += st["nonfinite_steps"]
            pre = self._preconditioner(p, st, group)
            for b, pair in enumerate(pre.blocks if pre is not None else ()):
                if pair is None:  # the block is held by another rank
                    continue
                for side, f in zip("LR", pair, strict=True):
                    d = {"param": index, "block": b, "side": side, **f.diagnostics()}
                    out["root_failures"] += d["root_failures"]
                    out["cholesky_failures"] += d.get("cholesky_failures", 0)
                    out["factors"].append(d)
        errors = [d["quant_error"] for d in out["factors"] if d["quant_error"] is not None]
        out["quant_error"] = sum(errors) / len(errors) if errors else None
        return out


class Shampoo4bit(Shampoo):
    """Shampoo with 4-bit Cholesky factors and error feedback (``quant="cholesky_ef"``)."""

    def __init__(self, params, lr: float = 1e-3, **kwargs: Any):
        kwargs.setdefault("quant", "cholesky_ef")
        super().__init__(params, lr, **kwargs)


def graft(direction: Tensor, grad: Tensor) -> Tensor:
    """Rescale ``direction`` to the Frobenius norm of ``grad`` (zero stays zero)."""
    norm_d = direction.norm()
    scale = torch.where(norm_d > 0, grad.norm() / norm_d, torch.zeros_like(norm_d))
    return direction.mul_(scale)


def _blocking(p: Tensor, group: dict) -> Blocking | None:
    if not group["precondition"]:
        return None
    return Blocking.of(tuple(local(p).shape), group["max_preconditioner_dim"])  # shard's shape


def _factor_config(group: dict) -> FactorConfig:
    return FactorConfig(group["bits"], group["block_size"], group["codebook"])


def _base_kwargs(group: dict) -> dict:
    if group["base"] == "adamw":
        return dict(betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"])
    return dict(
        momentum=group["momentum"], nesterov=group["nesterov"], weight_decay=group["weight_decay"]
    )


def _looks_like_ours(state_dict: dict) -> bool:
    groups = state_dict.get("param_groups") or []
    states = (state_dict.get("state") or {}).values()
    return (
        bool(groups)
        and all("quant" in g and "stat_decay" in g for g in groups)
        and all("layout" in st for st in states)
    )


def _nbytes(obj) -> int:
    if isinstance(obj, Tensor):
        return local(obj).nbytes  # a DTensor counts this rank's shard
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _copy_to(obj, device: torch.device):
    if isinstance(obj, Tensor):
        return obj.detach().to(device=device, copy=True)
    if isinstance(obj, dict):
        return {k: _copy_to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy_to(v, device) for v in obj]
    return obj


# -- validation -------------------------------------------------------------------------------
def _check(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise ValueError(f"invalid {name}={value!r}: {what}")


def validate_group(g: dict[str, Any]) -> None:
    """Raise ValueError naming the first invalid hyperparameter of a param group."""
    _check(g["base"] in BASES, "base", g["base"], f"must be one of {tuple(BASES)}")
    _check(g["quant"] in FACTORS, "quant", g["quant"], f"must be one of {tuple(FACTORS)}")
    _check(
        g["root_method"] in ROOT_METHODS,
        "root_method",
        g["root_method"],
        f"must be one of {ROOT_METHODS}",
    )
    _check(
        g["codebook"] in CODEBOOK_NAMES,
        "codebook",
        g["codebook"],
        f"must be one of {CODEBOOK_NAMES}",
    )
    _check(
        g["nonfinite"] in ("skip", "raise"),
        "nonfinite",
        g["nonfinite"],
        "must be 'skip' or 'raise'",
    )
    lr = g["lr"]
    _check(
        isinstance(lr, (float, int)) or (isinstance(lr, Tensor) and lr.numel() == 1),
        "lr",
        lr,
        "must be a number",
    )
    _check(float(lr) >= 0, "lr", lr, "must be >= 0")
    b1, b2 = g["betas"]
    _check(0 <= b1 < 1 and 0 <= b2 < 1, "betas", g["betas"], "each must be in [0, 1)")
    _check(g["eps"] >= 0, "eps", g["eps"], "must be >= 0")
    _check(g["weight_decay"] >= 0, "weight_decay", g["weight_decay"], "must be >= 0")
    _check(0 <= g["momentum"] < 1, "momentum", g["momentum"], "must be in [0, 1)")
    _check(
        not (g["nesterov"] and g["momentum"] == 0),
        "nesterov",
        g["nesterov"],
        "Nesterov momentum needs momentum > 0",
    )
    _check(0 <= g["stat_decay"] < 1, "stat_decay", g["stat_decay"], "must be in [0, 1)")
    _check(g["matrix_eps"] > 0, "matrix_eps", g["matrix_eps"], "must be > 0")
    _check(0 <= g["ef_decay"] < 1, "ef_decay", g["ef_decay"], "must be in [0, 1)")
    for name in ("stat_interval", "root_interval", "max_preconditioner_dim", "block_size"):
        v = g[name]
        _check(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            name,
            v,
            "must be an integer >= 1",
        )
    _check(
        isinstance(g["min_quant_numel"], int) and g["min_quant_numel"] >= 0,
        "min_quant_numel",
        g["min_quant_numel"],
        "must be an integer >= 0",
    )
    _check(g["bits"] in SUPPORTED_BITS, "bits", g["bits"], f"must be one of {SUPPORTED_BITS}")
