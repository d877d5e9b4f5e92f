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
from .checkpoint import STATE_FORMAT_VERSION, with_checksums
from .distributed import (
    is_dtensor,
    like_param,
    local,
    make_sharding,
    shard_key,
)
from .factors import StepHyper, check_failures, update_roots, update_statistics
from .layout import LAYOUT_KEYS, factor_config, layout_of, param_blocking, state_nbytes
from .loading import check_state_dict, copy_to, held_blocks
from .precision import AUTO_BITS, PrecisionConfig
from .precision_state import AdaptivePrecision, is_adaptive
from .preconditioner import ParamPreconditioner, precondition_blocks
from .validation import validate_group, validate_params

#: runs a function outside any ``torch.compile`` graph; torch.optim's own helper, which
#: imports Dynamo at the first call instead of at import (``torch.compiler.disable`` would add
#: about a second to ``import qshampoo``)
_eager = getattr(torch, "_disable_dynamo", torch.compiler.disable)


class Shampoo(Optimizer):
    """Shampoo with per-block Kronecker preconditioners, optionally stored in 4 bits.

    Args:
        params: parameters or param groups (any keyword below can be set per group).
        lr: learning rate of the base optimizer (a float, or a 0-d tensor).
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
        bits, block_size, codebook: the quantizer (see ``qshampoo.quant``). ``bits="auto"``
            (a quantized ``quant`` only): every factor starts at 4 bits and the ones whose
            4-bit storage costs the most accuracy per extra byte move to 8 bits, within
            ``memory_budget`` (see ``qshampoo.precision`` and ``docs/adaptive_precision.md``).
        ef_decay: decay of the Cholesky error-feedback state.
        min_quant_numel: factors with fewer elements than this stay fp32.
        precondition: False sends the group's parameters straight to the base optimizer.
        nonfinite: ``"skip"`` a parameter's step when its gradient has inf/NaN, or a squared
            norm that overflows fp32 (counted in ``diagnostics()``; statistics and moments stay
            clean), or ``"raise"`` ``FloatingPointError``.
        max_consecutive_failures: a factor whose inverse root (or Cholesky factorisation) still
            fails after the float64 and extra-damping retries keeps its previous value; this
            many failures in a row of one factor raise ``PreconditionerError``. 0 never raises.
        distributed: split the preconditioner blocks of replicated parameters across the
            ranks of ``process_group`` (each rank keeps and computes only its blocks, and the
            preconditioned blocks are all-gathered). ``None`` (default): on when
            ``torch.distributed`` is initialized with more than one rank; ``False``: every
            rank computes everything. Needs the same gradient on every rank (as under DDP).
            DTensor (FSDP2) parameters are always preconditioned per local shard.
            Optimizer-wide, not per group. See ``docs/distributed.md``.
        process_group: the group to split across (default: the default group).
        cholesky_damping: the Cholesky variants factor ``L + delta I`` (``delta = matrix_eps *
            max(diag L)``), and the stored factor carries that damping into the next EMA, so
            at steady state it holds about ``delta / (1 - stat_decay)`` where 32-bit Shampoo
            holds none. ``"carry"`` keeps it (Paper A as written); ``"subtract"`` removes the
            previous ``delta`` before the EMA. See ``docs/algorithm-notes.md``.
        memory_budget: with ``bits="auto"`` (required there, refused elsewhere), the most
            bytes the preconditioners may hold (``memory_report()["preconditioners"]``, which
            never exceeds it): a float in (0, 1] is a fraction of what 32-bit Shampoo's
            preconditioners would take for the same parameters, an int a number of bytes.
            A budget below what every factor needs at 4 bits raises ``ValueError``.
            Optimizer-wide; under ``distributed`` it applies to each process's own blocks.
        precision_config: the adaptive-precision policy's thresholds and hysteresis
            (``qshampoo.precision.PrecisionConfig``; default: its defaults).
        compile: fuse the dequantization of the low-bit roots of order >= 256 with
            ``torch.compile`` (one kernel per root shape; on the development CPU the step
            ranged from 5% faster to 18% slower than eager: ``benchmarks/RESULTS.md``,
            ``docs/speed.md``). Compiling takes a few seconds per shape at the first steps and
            needs a working C++ compiler; if it fails, the optimizer warns once and stays
            eager. Same results either way.

    The whole step can be compiled too, ``torch.compile(opt.step, dynamic=False)``: the
    statistics and root updates run eagerly and the rest of the step (dequantizing the roots,
    preconditioning, grafting, the base update) is one graph, compiled once.
    With an LR schedule, give ``lr`` as a tensor (``lr=torch.tensor(1e-3)``, as for
    torch.optim), or each new value recompiles. On the development CPU it takes 10-26 % off a
    step where nothing is due (``docs/speed.md``).
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
        max_consecutive_failures: int = 10,
        compile: bool = False,
        cholesky_damping: str = "carry",
        distributed: bool | None = None,
        process_group: Any = None,
        memory_budget: float | int | None = None,
        precision_config: PrecisionConfig | None = None,
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
            max_consecutive_failures=max_consecutive_failures,
            compile=compile,
            cholesky_damping=cholesky_damping,
        )
        self._precision = AdaptivePrecision(memory_budget, precision_config)
        self._sharding = make_sharding(distributed, process_group)
        self._views: dict[Tensor, tuple[Any, ParamPreconditioner]] = {}
        self._initialized = False
        super().__init__(params, defaults)
        self._initialized = True
        self._precision.check_setup(self, sharded=self._sharding is not None)

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim keeps only defaults, state and param groups; a copy or pickle with
        # bits="auto" also needs its memory_budget (the process group is not kept)
        return {**super().__getstate__(), "_precision": self._precision}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._views = {}
        self.__dict__.setdefault("_sharding", None)
        self.__dict__.setdefault("_precision", AdaptivePrecision(None, None))
        self.__dict__.setdefault("_initialized", True)

    # -- param groups -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:  # a group that fails validation must not stay in the optimizer
            validate_group(group)
            validate_params(group["params"])
            if getattr(self, "_initialized", False):  # groups added after the constructor
                self._precision.check_setup(self, sharded=self._sharding is not None)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    # -- the step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimizer step: ``_prepare`` (eager), then, per param group, what every step
        does: precondition, graft, base update. Under ``torch.compile(opt.step)`` the latter
        is one compiled graph for all groups (docs/speed.md)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        prepared = self._prepare(torch.compiler.is_compiling())
        for group, prep in zip(self.param_groups, prepared, strict=True):
            if prep is not None:
                self._update(group, *prep)
        return loss

    def _update(self, group, params, grads, states, norms, pres, steps) -> None:
        """Precondition, graft and apply the base update to a group's prepared parameters."""
        directions = self._precondition(params, grads, pres, group["compile"])
        _, update = BASES[group["base"]]
        kwargs = _base_kwargs(group)
        for p, g, st, d, n, k in zip(params, grads, states, directions, norms, steps, strict=True):
            direction = g if d is None else graft(d, g, n)
            if is_dtensor(p):  # FSDP2: update the local shard and its local state
                base = st["base"]
                view = {key: local(v) for key, v in base.items()}
                update(local(p), direction, view, k, lr=group["lr"], **kwargs)
                base.update({key: like_param(p, v) for key, v in view.items() if key not in base})
            else:
                update(p, direction, st["base"], k, lr=group["lr"], **kwargs)

    @_eager
    def _prepare(self, compiling: bool = False) -> list[tuple | None]:
        """Everything of a step before preconditioning, for every param group
        (``_prepare_group``), after the split of the blocks across ranks is brought up to date.

        It always runs eagerly, also inside ``torch.compile``: it decides on the host (which
        factors are due, whether a gradient or a factorisation is finite, which damping a
        factor ended with), so a compiler would break its graph at every decision and
        specialize on every outcome (dozens of recompilations); outside it, the rest of the
        step compiles as one graph that is reused.
        """
        if self._sharding is not None:
            self._sharding.update_plan(self.param_groups)
        return [self._prepare_group(group, compiling) for group in self.param_groups]

    def _prepare_group(self, group: dict[str, Any], compiling: bool) -> tuple | None:
        """Collect the group's gradients, create state, leave out non-finite gradients, count
        the step, and update the statistics and roots that are due. Returns ``(params, grads,
        states, grad_norms, preconditioners, steps)``, or None when no parameter of the group
        has a gradient. ``steps`` are the parameters' step counters: ints, or, for a compiled
        step (``compiling``), one tensor on the parameters' device (a compiled graph reads a
        tensor's value; an int it would be specialized on, and recompiled for at every step).
        """
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
            return None
        states = [self._state(p, group) for p in params]
        params, grads, states, norms = self._drop_nonfinite(params, grads, states, group)

        hp = StepHyper(
            group["stat_decay"],
            group["matrix_eps"],
            group["ef_decay"],
            group["root_method"],
            group["cholesky_damping"],
        )
        due_stats, due_roots, pres, touched = [], [], [], []
        stats_updated = False
        for p, g, st in zip(params, grads, states, strict=True):
            st["step"] += 1
            pre = self._preconditioner(p, st, group)
            pres.append(pre)
            if pre is None:
                continue
            stats_due = st["step"] % group["stat_interval"] == 0
            roots_due = st["step"] % group["root_interval"] == 0
            if stats_due:
                due_stats.extend(pre.statistics_jobs(g))
                stats_updated = True
            if roots_due:
                due_roots.extend(pre.factors())
            if stats_due or roots_due:
                touched.append((p, pre))
        if stats_updated:
            # every parameter's blocks at once: same-shaped factors share batched calls
            update_statistics(due_stats, hp)
            # before the roots, so that a switched factor stores its root at its new width
            self._precision.after_statistics(self, group)
        if due_roots:
            update_roots(due_roots, hp)
        if touched:
            self._check_failures(touched, group)
        steps = [st["step"] for st in states]
        if compiling and params:
            # float64, as the eager step's Python floats: 1 - beta2**k in fp32 loses digits
            # (MPS has no float64)
            device = params[0].device
            dtype = torch.float32 if device.type == "mps" else torch.float64
            steps = torch.tensor(steps, dtype=dtype, device=device)
        return params, grads, states, norms, pres, steps

    def _precondition(self, params, grads, pres, compiled: bool) -> list[Tensor | None]:
        """``L_hat G R_hat`` per parameter (None where not preconditioned).

        Parameters whose blocks are split across ranks are done together, in one exchange.
        """
        if self._sharding is None:
            # every block of every parameter in one batch: same-shaped blocks share calls
            jobs = [
                pre.jobs(g) if pre is not None else [] for g, pre in zip(grads, pres, strict=True)
            ]
            done = iter(precondition_blocks([j for js in jobs for j in js], compiled))
            return [
                None if pre is None else pre.assemble([next(done) for _ in js], g)
                for g, pre, js in zip(grads, pres, jobs, strict=True)
            ]
        out: list[Tensor | None] = [None] * len(params)
        split = []
        for i, (p, g, pre) in enumerate(zip(params, grads, pres, strict=True)):
            if pre is not None:
                if self._sharding.owners(p) is None:
                    out[i] = pre.precondition(g, compiled)
                else:
                    split.append(i)
        if split:
            items = [(params[i], grads[i], pres[i]) for i in split]
            for i, d in zip(split, self._sharding.precondition(items, compiled), strict=True):
                out[i] = d
        return out

    def _drop_nonfinite(self, params, grads, states, group):
        """Leave out parameters whose gradient holds inf/NaN (one host sync per group).

        A gradient whose squared norm overflows fp32 counts as non-finite too: its statistics
        ``G G^T`` and Adam's second moment would be infinite. Returns the kept parameters,
        gradients, states and gradient norms (reused by grafting).
        """
        norms = [torch.linalg.vector_norm(g) for g in grads]
        finite = torch.isfinite(torch.stack(norms)).tolist()
        if all(finite):
            return params, grads, states, norms
        bad = [p for p, ok in zip(params, finite, strict=True) if not ok]
        if group["nonfinite"] == "raise":
            where = ", ".join(self._describe(p) for p in bad)
            raise FloatingPointError(
                f"non-finite gradient (inf/NaN, or a squared norm beyond float32) in {where}; "
                "use nonfinite='skip' to skip such steps, or lower the learning rate / use "
                "gradient clipping"
            )
        for st, ok in zip(states, finite, strict=True):
            if not ok:
                st["nonfinite_steps"] += 1
        keep = [i for i, ok in enumerate(finite) if ok]
        return (
            [params[i] for i in keep],
            [grads[i] for i in keep],
            [states[i] for i in keep],
            [norms[i] for i in keep],
        )

    def _check_failures(self, touched: list, group: dict) -> None:
        def entries():
            for p, pre in touched:
                for b, pair in enumerate(pre.blocks):
                    if pair is None:  # held by another rank
                        continue
                    for side, f in zip(("left", "right"), pair, strict=True):
                        yield (
                            f,
                            lambda p=p, b=b, side=side: f"{self._describe(p)}, block {b} ({side})",
                        )

        check_failures(
            entries(),
            group["max_consecutive_failures"],
            advice=f"raise matrix_eps (now {group['matrix_eps']:g}), ",
        )

    def _describe(self, p: Tensor) -> str:
        """``parameter #i (group g, shape (...))``: where a parameter sits in the optimizer."""
        i = 0
        for g, group in enumerate(self.param_groups):
            for q in group["params"]:
                if q is p:
                    return f"parameter #{i} (param group {g}, shape {tuple(p.shape)})"
                i += 1
        return f"parameter of shape {tuple(p.shape)}"

    # -- state ------------------------------------------------------------------------------------
    def _state(self, p: Tensor, group: dict[str, Any]) -> dict:
        st = self.state[p]
        if not st:
            init, _ = BASES[group["base"]]
            st["step"] = 0
            st["nonfinite_steps"] = 0
            st["layout"] = layout_of(group)
            st["base"] = {k: like_param(p, v) for k, v in init(local(p)).items()}
            self._new_preconditioner(p, st, group)
        else:
            changed = [k for k in LAYOUT_KEYS if st["layout"][k] != group[k]]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} changed after the optimizer state was created; these "
                    "decide how the state is stored. Create a new optimizer to change them."
                )
        return st

    def _new_preconditioner(self, p: Tensor, st: dict, group: dict) -> None:
        """Fresh factors (statistics ``eps I``, roots ``I``) for the blocks this rank holds."""
        blocking = param_blocking(p, group)
        if blocking is None:
            return
        pre, stored = ParamPreconditioner.create(
            blocking,
            group["quant"],
            factor_config(group),
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
            pre = ParamPreconditioner.view(param_blocking(p, group), blocks, factor_config(group))
            self._views[p] = cached = (stored, pre)
        return cached[1]

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state, ``torch.optim`` style, plus ``format_version`` and ``checksums``
        (one per parameter state and per param group; ``load_state_dict`` verifies them).

        As with every ``torch.optim`` optimizer the returned tensors are the live state: save
        it before the next ``step()`` (a state that changed after its checksum was taken is
        reported as corrupted on load).

        With blocks split across ranks (``distributed``), each rank's state dict holds only the
        preconditioner blocks that rank owns, as ``state["precond"] = {"<block index>": ...}``;
        the base-optimizer state is complete on every rank. Under FSDP2 it holds this rank's
        shard. See ``docs/distributed.md``.
        """
        sd = super().state_dict()
        sd["format_version"] = STATE_FORMAT_VERSION
        return with_checksums(sd)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by ``state_dict()``, after checking that it fits this optimizer.

        Raises ``ValueError`` naming the difference when the checkpoint comes from another
        variant or layout (``quant``, ``max_preconditioner_dim``, ...), another model or
        parameter order (shapes differ), fails its checksum (damaged bytes), or holds inf/NaN.
        Nothing is changed when it raises. Under ``bits="auto"`` each factor keeps the width it
        was saved with; if that exceeds this optimizer's ``memory_budget``, the precision
        policy re-plans at once.

        ``torch.optim.Optimizer`` would cast every saved tensor to its parameter's dtype, which
        would turn 4-bit codes into floats under bf16 parameters; here tensors are only moved to
        the parameter's device.
        """
        merged, ids = check_state_dict(state_dict, self.param_groups)

        super().load_state_dict({**state_dict, "state": {}})
        for mine, group in zip(self.param_groups, merged, strict=True):
            for k, v in group.items():  # keys a checkpoint of an older format lacks
                mine.setdefault(k, v)
        group_of = {p: g for g in self.param_groups for p in g["params"]}
        self._views.clear()
        if self._sharding is not None:
            self._sharding.update_plan(self.param_groups)
        saved = state_dict["state"]
        for i, p in ids:
            if i not in saved:
                continue
            st, group = copy_to(saved[i], p.device), group_of[p]
            if st.get("layout") == layout_of(group):  # if not, the next step() explains
                if st.get("precond") is None:
                    # saved without preconditioners (qshampoo.distributed.drop_preconditioners):
                    # Shampoo restarts them, the rest is kept
                    self._new_preconditioner(p, st, group)
                else:
                    st["precond"] = held_blocks(i, p, st["precond"], group, self._sharding)
            self.state[p] = st
        self._precision.fit_loaded(self)

    # -- reports ----------------------------------------------------------------------------------
    def memory_report(self) -> dict[str, int]:
        """Bytes held by the optimizer state (``tensor.nbytes`` of every stored tensor).

        ``preconditioners``: all factor state, of which ``statistics`` (L, R in the variant's
        form) and ``roots`` (the inverse roots); the rest of it is ``diagnostics`` (a few
        scalars per factor). ``base_state``: the base optimizer's moments. ``total``: all.
        Under ``torch.distributed``, the bytes this rank holds: its own blocks, or its shard
        under FSDP2 (see ``docs/distributed.md``).

        With ``bits="auto"`` also: ``preconditioners_4bit``, ``preconditioners_8bit`` and
        ``preconditioners_fp32`` (the factors held at each width, their scalars included; they
        add up to ``preconditioners``) and ``memory_budget`` (in bytes, never exceeded by
        ``preconditioners``).
        """
        report = dict.fromkeys(("statistics", "roots", "preconditioners", "base_state"), 0)
        by_bits = dict.fromkeys((32, *AUTO_BITS), 0)
        total = 0
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                total += state_nbytes(st)
                report["base_state"] += state_nbytes(st["base"])
                report["preconditioners"] += state_nbytes(st.get("precond"))
                pre = self._preconditioner(p, st, group)
                for f in pre.factors() if pre is not None else ():
                    for k, v in f.nbytes().items():
                        report[k] += v
                    by_bits[f.bits] = by_bits.get(f.bits, 0) + state_nbytes(f.state)
        report["diagnostics"] = report["preconditioners"] - report["statistics"] - report["roots"]
        report["total"] = total
        if is_adaptive(self.param_groups):
            for bits, nbytes in by_bits.items():
                report["preconditioners_fp32" if bits == 32 else f"preconditioners_{bits}bit"] = (
                    nbytes
                )
            report["memory_budget"] = self._precision.budget_bytes(self)
        return report

    def diagnostics(self) -> dict[str, Any]:
        """Counters a long run should watch, for a stability panel.

        Returns ``nonfinite_steps`` (parameter steps skipped for inf/NaN gradients),
        ``root_failures`` and ``cholesky_failures`` (totals over factors), ``quant_error``
        (mean last quantization error over the quantized factors, None if there are none) and
        ``factors``: one dict per factor with ``param`` (index over all groups), ``group``,
        ``shape``, ``block``, ``side`` ("L"/"R"), ``kind``, ``order``, its failure counts
        (total and current streak), ``root_damping`` / ``cholesky_damping`` (the damping its
        last root / factorisation used, None before the first), ``quant_error``, ``bits`` (the
        quantized variants) and ``skipped_steps`` (its parameter's skipped steps).

        With ``bits="auto"`` each adaptive factor also has ``precision_signal`` (its latest
        estimated 4-bit error), ``promotions`` and ``demotions``, and ``precision`` sums it up:
        ``memory_budget``, ``bytes`` (the preconditioners now), ``all_4bit`` / ``all_8bit``
        (every adaptive factor at 4 / 8 bits), ``reference_32bit``, ``factors_4bit`` /
        ``factors_8bit``, ``promotions`` / ``demotions`` (totals) and ``log``: the latest
        switches (step, param, group, block, side, order, from, to, signal).
        """
        out: dict[str, Any] = {
            "nonfinite_steps": 0,
            "root_failures": 0,
            "cholesky_failures": 0,
            "quant_error": None,
            "factors": [],
        }
        i = -1
        for g, group in enumerate(self.param_groups):
            for p in group["params"]:
                i += 1
                st = self.state.get(p)
                if not st:
                    continue
                out["nonfinite_steps"] += st["nonfinite_steps"]
                pre = self._preconditioner(p, st, group)
                for b, pair in enumerate(pre.blocks if pre is not None else ()):
                    if pair is None:  # the block is held by another rank
                        continue
                    for side, f in zip("LR", pair, strict=True):
                        d = f.diagnostics()
                        out["root_failures"] += d["root_failures"]
                        out["cholesky_failures"] += d["cholesky_failures"]
                        where = dict(param=i, group=g, shape=tuple(p.shape), block=b, side=side)
                        out["factors"].append(
                            {**where, **d, "skipped_steps": st["nonfinite_steps"]}
                        )
        errors = [d["quant_error"] for d in out["factors"] if d["quant_error"] is not None]
        out["quant_error"] = sum(errors) / len(errors) if errors else None
        if is_adaptive(self.param_groups):
            out["precision"] = self._precision.summary(self, out["factors"])
        return out


class Shampoo4bit(Shampoo):
    """Shampoo with 4-bit Cholesky factors and error feedback (``quant="cholesky_ef"``)."""

    def __init__(self, params, lr: float = 1e-3, **kwargs: Any):
        kwargs.setdefault("quant", "cholesky_ef")
        super().__init__(params, lr, **kwargs)


def graft(direction: Tensor, grad: Tensor, grad_norm: Tensor | None = None) -> Tensor:
    """Rescale ``direction`` to the Frobenius norm of ``grad`` (zero stays zero)."""
    norm_d = direction.norm()
    if grad_norm is None:
        grad_norm = grad.norm()
    scale = torch.where(norm_d > 0, grad_norm / norm_d, torch.zeros_like(norm_d))
    return direction.mul_(scale)


def _base_kwargs(group: dict) -> dict:
    if group["base"] == "adamw":
        return dict(betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"])
    return dict(
        momentum=group["momentum"], nesterov=group["nesterov"], weight_decay=group["weight_decay"]
    )
