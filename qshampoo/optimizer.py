"""Shampoo and Shampoo4bit: the torch.optim front end.

One step, for each parameter, reads top to bottom:

    statistics (every stat_interval steps)  ->  roots (every root_interval steps, batched)
    ->  precondition  ->  graft to the gradient's norm  ->  base update (AdamW or SGD)

Tensors with fewer than two non-trivial dimensions, and groups with ``precondition=False``,
skip the first four and go straight to the base optimizer. Hyperparameters are read from the
param group at every step, so LR schedulers and per-group overrides work.
"""

from __future__ import annotations

import math
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .base import BASES, in_chunks, skippable_values
from .blocking import DEFAULT_MAX_FACTOR_RATIO, warn_large_factors
from .checkpoint import STATE_FORMAT_VERSION, with_checksums
from .distributed import Distributor, make_distributor
from .dtensor import like_param, local
from .factors import PreconditionerError, StepHyper, check_failures
from .layout import LAYOUT_KEYS, layout_of, param_blocking, state_nbytes
from .loading import check_state_dict, copy_to
from .precision import AUTO_BITS, PrecisionConfig
from .precision_state import AdaptivePrecision, is_adaptive
from .store import PreconditionerStore
from .validation import validate_group, validate_params
from .workspace import DEFAULT_MAX_WORKSPACE, check_workspace

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
        max_factor_ratio: a block side whose factor would hold more than this many times the
            block's entries (order ``n > max_factor_ratio * m`` for an ``n x m`` block) gets no
            factor: the block is preconditioned on its other side only (embeddings and other
            long, thin parameters). None: every side gets a factor.
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
            norm that overflows fp32 (counted in ``diagnostics()``; the parameter, its
            statistics and moments stay as they were), or ``"raise"`` ``FloatingPointError``.
            On an accelerator ``"skip"`` is decided on the device (no host synchronisation)
            at a step where nothing or only statistics are due (a non-finite gradient's
            factors keep their state, selected there), and on the host (one read) where roots
            are due; on the CPU the flags are read at every step (a read of memory),
            and the device-side skip is used only by a group that has met a non-finite
            gradient; ``"raise"`` reads every step. The step counter, which schedules the statistics
            and roots, counts skipped steps too (a plain step cannot know on the host whether
            it skipped); AdamW's bias correction counts the applied ones
            (``docs/robustness.md``).
        max_consecutive_failures: a factor whose inverse root (or Cholesky factorisation) still
            fails after the float64 and extra-damping retries keeps its previous value; this
            many failures in a row of one factor raise ``PreconditionerError``. 0 never raises.
            On an accelerator a statistics step where no root is due reads nothing back: a
            failed Cholesky factorisation is not retried there (the factor keeps its previous
            value), its failure is counted on the device, and the error is raised at the next
            root step, before that step changes anything (``docs/robustness.md``).
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
        max_workspace_bytes: the most temporary memory the batched stages of a step (statistics,
            roots, preconditioning) may allocate on top of the state; work is cut into batches
            that fit (a single block that needs more is done alone).
            ``memory_report()["workspace"]`` is what the step may allocate at most for the
            current parameters. Optimizer-wide.
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
        max_factor_ratio: float | None = DEFAULT_MAX_FACTOR_RATIO,
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
        max_workspace_bytes: int = DEFAULT_MAX_WORKSPACE,
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
            max_factor_ratio=max_factor_ratio,
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
        self.store = PreconditionerStore(
            self, make_distributor(distributed, process_group), check_workspace(max_workspace_bytes)
        )
        self._initialized = False
        #: id(param group) -> (the group, its layout, a copy of its values) when last validated
        self._validated: dict[int, tuple] = {}
        super().__init__(params, defaults)
        self._initialized = True
        self._precision.check_setup(self, sharded=self.store.distributor.world > 1)

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim keeps only defaults, state and param groups; a copy or pickle with
        # bits="auto" also needs its memory_budget, and the workspace bound (the process group
        # is not kept: a copy runs in one process)
        return {
            **super().__getstate__(),
            "_precision": self._precision,
            "_max_workspace_bytes": self.store.max_workspace_bytes,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        # also called by torch.optim's load_state_dict, which must keep the store
        workspace = state.pop("_max_workspace_bytes", DEFAULT_MAX_WORKSPACE)
        super().__setstate__(state)
        self.__dict__.setdefault("_precision", AdaptivePrecision(None, None))
        self.__dict__.setdefault("_initialized", True)
        self.__dict__.setdefault("_validated", {})
        if "store" not in self.__dict__:  # unpickled
            self.store = PreconditionerStore(self, Distributor(), workspace)

    # -- param groups -------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:  # a group that fails validation must not stay in the optimizer
            validate_group(group)
            validate_params(group["params"])
            shapes = (p.shape for p in group["params"])
            warn_large_factors(shapes, group["max_preconditioner_dim"], group["max_factor_ratio"])
            if getattr(self, "_initialized", False):  # groups added after the constructor
                self._precision.check_setup(self, sharded=self.store.distributor.world > 1)
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

    def _update(self, group, params, grads, states, norms, pres, values) -> None:
        """Precondition, graft and apply the base update to a group's prepared parameters,
        each as soon as its direction is known (so that the directions of all parameters are
        never held at once). ``values``: each parameter's base-update values (``_advance``)."""
        _, _, update = BASES[group["base"]]
        update = in_chunks(update, self.store.share)
        kwargs = _base_kwargs(group)
        dist = self.store.distributor
        sign = -1.0 if group["maximize"] else 1.0

        def finish(j: int, direction: Tensor | None) -> None:
            g = grads[j]
            if direction is None:  # not preconditioned: the gradient itself
                direction = g.float() if sign > 0 else g.float().neg()
            else:
                direction = graft(direction, g, norms[j], sign)
            dist.base_update(update, params[j], direction, states[j]["base"], values[j], **kwargs)

        items, where = [], []
        for j, pre in enumerate(pres):
            if pre is None:
                finish(j, None)
            else:
                items.append((params[j], grads[j], pre))
                where.append(j)
        if items:
            dist.precondition(
                items, group, self.store, lambda k, d: finish(where[k], d), group["compile"]
            )

    @_eager
    def _prepare(self, compiling: bool = False) -> list[tuple | None]:
        """Everything of a step before preconditioning, for every param group: every check
        first (gradients, non-finite values), then, group by group, state creation, the step
        counters and the statistics and roots that are due.

        It always runs eagerly, also inside ``torch.compile``: it decides on the host (which
        factors are due, whether a gradient or a factorisation is finite, which damping a
        factor ended with), so a compiler would break its graph at every decision and
        specialize on every outcome (dozens of recompilations); outside it, the rest of the
        step compiles as one graph that is reused.
        """
        self._check_groups()
        self._precision.begin_step()
        self.store.distributor.update_plan(self.param_groups)
        gathered = [self._gather(group) for group in self.param_groups]
        due = [
            None if g is None else [self._due(group, p) for p in g[0]]
            for group, g in zip(self.param_groups, gathered, strict=True)
        ]
        flags = self._check_nonfinite(gathered, due, compiling)
        if any(f is not None for f in flags):  # the host reads at this step anyway
            self._fold_failures()
        # A PreconditionerError is found only once statistics and roots are computed: at a
        # step where one can be raised, the state the step changes is copied first and put
        # back if it is (see _undo_point)
        undo = self._undo_point(gathered)
        try:
            return [
                None if g is None else self._advance(group, *g, d, f, compiling)
                for group, g, d, f in zip(self.param_groups, gathered, due, flags, strict=True)
            ]
        except PreconditionerError:
            if undo is not None:
                undo()
            raise

    def _check_groups(self) -> None:
        """Validate every param group as the constructor does, and that the values deciding
        how the state is stored are those it was created with, before anything changes: a
        value written into ``param_groups`` mid-run, or by a ``load_state_dict`` pre-hook, is
        refused with the constructor's message. A group is checked again only when a value
        changed (a tensor ``lr`` when it is replaced, not when an LR scheduler writes into it:
        reading it would synchronise with its device)."""
        for group in self.param_groups:
            cached = self._validated.get(id(group))
            if cached is not None and _unchanged(group, cached[2]):
                continue
            validate_group(group)
            layout = layout_of(group)
            if cached is None or cached[1] != layout:  # (not when only, say, lr changed)
                for p in group["params"]:
                    st = self.state.get(p)
                    changed = [k for k in LAYOUT_KEYS if st and st["layout"][k] != group[k]]
                    if changed:
                        raise ValueError(
                            f"{', '.join(changed)} changed after the optimizer state was "
                            "created; these decide how the state is stored. Create a new "
                            "optimizer to change them."
                        )
            # the group is kept, so that its id is not reused while cached
            self._validated[id(group)] = (group, layout, _values(group))

    def _undo_point(self, gathered: list[tuple | None]) -> Callable[[], None] | None:
        """What puts back the state this step's ``_advance`` may change (step counters, skip
        counters, statistics, roots, new states, the precision log), copied now; None when no
        ``PreconditionerError`` can be raised at this step, which is most steps: one is raised
        when a factor's failures in a row reach ``max_consecutive_failures``, so only at a step
        that updates a factor already one failure short of it (any due factor when the limit
        is 1). The copy is then of every preconditioner state: as much memory again, at those
        steps only. Parameters and moments are not changed before every group has advanced."""
        if not any(
            self._may_raise(group, g[0])
            for group, g in zip(self.param_groups, gathered, strict=True)
            if g is not None
        ):
            return None
        saved = {
            p: copy_to({k: v for k, v in st.items() if k != "base"}, None)
            for p, st in self.state.items()
        }
        log = deepcopy(self._precision.log)

        def undo() -> None:
            for p in [p for p in self.state if p not in saved]:
                del self.state[p]
            for p, kept in saved.items():
                st = self.state[p]
                for k in [k for k in st if k != "base"]:
                    del st[k]
                st.update(kept)
            self._precision.log = log
            self.store.forget_views()

        return undo

    def _may_raise(self, group: dict, params: list[Tensor]) -> bool:
        """Whether this step's statistics or roots of ``params`` may raise PreconditionerError."""
        limit = group["max_consecutive_failures"]
        if limit <= 0:
            return False
        for p in params:
            st = self.state.get(p)
            k = (st["step"] if st else 0) + 1
            if k % group["stat_interval"] and k % group["root_interval"]:
                continue  # nothing due
            if not st:  # new: its fresh factors may fail at once
                if limit == 1 and param_blocking(p, group) is not None:
                    return True
                continue
            pre = self.store.view(p, group)
            if pre is None:  # not preconditioned
                continue
            if any(f.failure_streak()[1] >= limit - 1 for f in pre.factors()):
                return True
        return False

    def _gather(self, group: dict[str, Any]) -> tuple | None:
        """The group's parameters with a gradient, their local gradients (as they are: a
        narrower dtype is converted where it is used) and fp32 gradient norms; None when no
        parameter of the group has a gradient."""
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Shampoo does not support sparse gradients")
            params.append(p)
            grads.append(local(p.grad))
        if not params:
            return None
        return params, grads, [_grad_norm(g) for g in grads]

    def _due(self, group: dict, p: Tensor) -> tuple[bool, bool]:
        """``(statistics, roots)``: whether ``p``'s statistics and roots are due at this step
        (read before its step counter advances). Meta tensors have no values to factor or to
        decide on: nothing is due for them."""
        if p.device.type == "meta":
            return False, False
        st = self.state.get(p)
        if st:
            k, preconditioned = st["step"] + 1, self.store.view(p, group) is not None
        else:
            k, preconditioned = 1, param_blocking(p, group) is not None
        if not preconditioned:
            return False, False
        return k % group["stat_interval"] == 0, k % group["root_interval"] == 0

    def _check_nonfinite(
        self,
        gathered: list[tuple | None],
        due: list[list[tuple[bool, bool]] | None],
        compiling: bool,
    ) -> list[list[tuple[bool, bool, bool]] | None]:
        """``(step, statistics, clean)`` for each parameter of each group, read on the host (one
        sync for all groups) only at a step that needs them: where a group raises on a
        non-finite gradient, where some roots are due (they are decided on the host), or where
        the group's gradients are on the CPU (``_reads_are_free``); None otherwise: the plain
        and statistics steps of ``nonfinite="skip"`` on an accelerator, whose skip is decided
        on the device (``_base_values``), and which leave a non-finite gradient out of the
        statistics there too (``_advance``).

        ``step``: whether the gradient is finite. ``statistics``: whether its statistics can
        take it: a gradient whose squared norm overflows fp32 counts as non-finite too (its
        statistics ``G G^T`` and Adam's second moment would be infinite). A float64 gradient is
        checked in float64, as ``torch.optim.AdamW`` steps it: finite, it is stepped, and only
        its statistics update is left out when ``G G^T`` would overflow fp32. ``clean``: the
        parameter has never skipped a step (its skip counter is 0). With
        ``nonfinite="raise"`` in a group that has one, raise ``FloatingPointError`` before
        anything changes."""
        needed = any(
            g is not None
            and (
                group["nonfinite"] == "raise"
                or any(roots for _, roots in d)
                # a CPU read is free; device-side values cost ~10 operators per parameter,
                # and its statistics take the retry ladder, which reads the host anyway
                or (
                    _reads_are_free(g[2][0].device)
                    and (not compiling or any(stats for stats, _ in d))
                )
            )
            for group, g, d in zip(self.param_groups, gathered, due, strict=True)
        )
        if not needed:
            return [None] * len(gathered)
        counters = [
            st["nonfinite_steps"] if (st := self.state.get(p)) else 0
            for g in gathered
            if g is not None
            for p in g[0]
        ]
        flags = _finite_flags([n for g in gathered if g is not None for n in g[2]], counters)
        kept = [None if g is None else [next(flags) for _ in g[0]] for g in gathered]
        for group, g, ok in zip(self.param_groups, gathered, kept, strict=True):
            if g is not None and group["nonfinite"] == "raise" and not all(s for s, *_ in ok):
                bad = [p for p, (good, *_) in zip(g[0], ok, strict=True) if not good]
                where = ", ".join(self.store.describe(p) for p in bad)
                raise FloatingPointError(
                    f"non-finite gradient (inf/NaN, or a squared norm beyond float32) in {where}; "
                    "use nonfinite='skip' to skip such steps, or lower the learning rate / use "
                    "gradient clipping"
                )
        return kept

    def _advance(self, group: dict[str, Any], params, grads, norms, due, flags, compiling) -> tuple:
        """Create state, count the step, make the base update's values (which skip a
        non-finite gradient's parameter, counted), and update the statistics and roots that
        are due (``due``, from ``_due``), leaving out the parameters whose gradient ``flags``
        (``_check_nonfinite``, read on the host at every root step) say are non-finite;
        without flags (an accelerator's statistics step) every due statistics update is made
        and a non-finite gradient's factors keep their state, selected on the device
        (``_statistics_finite``). Returns ``(params, grads, states, grad_norms,
        preconditioners, values)``; ``values``: each parameter's base-update values
        (``_base_values``).
        """
        states = [self._state(p, group) for p in params]
        for st in states:
            st["step"] += 1  # skipped or not (docs/robustness.md)
        values = self._base_values(group, params, norms, states, flags, compiling)
        hp = StepHyper(
            group["stat_decay"],
            group["matrix_eps"],
            group["ef_decay"],
            group["root_method"],
            group["cholesky_damping"],
        )
        due_stats, due_roots, pres, touched = [], [], [], []
        finite, stats_finite = [], None  # without flags: per job, whether its gradient is
        for i, (p, g, (stats_due, roots_due), ok) in enumerate(
            zip(params, grads, due, flags or [None] * len(params), strict=True)
        ):
            pre = self.store.view(p, group)
            pres.append(pre)
            if pre is None or not (stats_due or roots_due):
                continue
            if ok is not None:  # read on the host
                good, stats_ok, _ = ok
                if not good:  # a skipped parameter's preconditioner is left as it is
                    continue
                stats_due = stats_due and stats_ok
            if stats_due:
                jobs = pre.statistics_jobs(g)
                due_stats.extend(jobs)
                if ok is None:  # decided on the device (no roots are due: see above)
                    if stats_finite is None:
                        stats_finite = _statistics_finite(norms).unbind()
                    finite.extend([stats_finite[i]] * len(jobs))
            if roots_due:
                due_roots.extend(pre.factors())
            if stats_due or roots_due:
                touched.append((p, pre))
        if due_stats:
            on_host = flags is not None
            # every parameter's blocks at once: same-shaped factors share batched calls
            self.store.update_statistics(due_stats, hp, None if on_host else finite)
            self.store.failures_pending |= not on_host
            # before the roots, so that a switched factor stores its root at its new width
            self._precision.after_statistics(self, group, on_host)
        if due_roots:
            self.store.update_roots(due_roots, hp)
        if touched:
            self._check_failures(touched, group)
        return params, grads, states, norms, pres, values

    def _base_values(
        self, group: dict, params, norms, states, flags, compiling: bool
    ) -> list[dict]:
        """The base update's values of each parameter at this step (``qshampoo.base``).

        Host numbers, as for an eager ``torch.optim`` step, where the gradients' ``flags``
        were read (``_check_nonfinite``) and say that every gradient of the group is finite
        and that none of its parameters ever skipped a step (their step counts are then their
        applied steps); and for meta tensors. Otherwise the skip is decided on the device, as
        torch.optim's fused AdamW skips on ``found_inf``: a flag per parameter (its gradient
        norm is finite) makes the update leave the parameter and its moments as they are,
        and adds one to its skip counter (``state["nonfinite_steps"]``, an int64 tensor on its
        device); AdamW's bias correction counts the applied steps. Nothing is read back. Under
        ``torch.compile`` the values are device tensors always (a compiled graph reads a
        tensor's value; a number it would be specialized on, and recompiled for at every
        step).
        """
        hyper = _value_kwargs(group)
        clean = flags is not None and all(good and fresh for good, _, fresh in flags)
        if params[0].device.type == "meta" or (clean and not compiling):
            host_values = BASES[group["base"]][1]
            return [host_values(st["step"], **hyper) for st in states]
        keep = torch.stack(norms).isfinite()
        counters = [st["nonfinite_steps"] for st in states]
        torch._foreach_add_(counters, keep.logical_not().unbind())
        steps = [st["step"] for st in states]
        return skippable_values(group["base"], keep, torch.stack(counters), steps, **hyper)

    def _fold_failures(self) -> None:
        """Read the Cholesky failures an accelerator's statistics steps counted on the device
        (one host read; ``fold_failures``), and raise ``PreconditionerError`` at once, before
        this step changes anything, for a factor whose failures in a row reached its group's
        ``max_consecutive_failures`` (also when ``diagnostics()`` read them first)."""
        if not self.store.failures_pending:  # (the CPU: after the first step, never)
            return
        self.store.failures_pending = False
        self.store.fold_failures()
        for g, group in enumerate(self.param_groups):
            entries = [
                (
                    e.factor,
                    lambda e=e: (
                        f"{self.store.describe(e.param)}, block {e.block} "
                        f"({'left' if e.side == 'L' else 'right'})"
                    ),
                )
                for e in self.store.entries()
                if e.group == g
            ]
            check_failures(
                entries,
                group["max_consecutive_failures"],
                advice=f"raise matrix_eps (now {group['matrix_eps']:g}), ",
                retried=False,
            )

    def _check_failures(self, touched: list, group: dict) -> None:
        def entries():
            for p, pre in touched:
                for b, pair in enumerate(pre.blocks):
                    if pair is None:  # held by another rank
                        continue
                    for side, f in zip(("left", "right"), pair, strict=True):
                        if f is not None:
                            yield (
                                f,
                                lambda p=p, b=b, side=side: (
                                    f"{self.store.describe(p)}, block {b} ({side})"
                                ),
                            )

        check_failures(
            entries(),
            group["max_consecutive_failures"],
            advice=f"raise matrix_eps (now {group['matrix_eps']:g}), ",
        )

    # -- state ------------------------------------------------------------------------------------
    def _state(self, p: Tensor, group: dict[str, Any]) -> dict:
        st = self.state[p]
        if not st:
            init = BASES[group["base"]][0]
            st["step"] = 0
            st["nonfinite_steps"] = _counter(0, p)
            st["layout"] = layout_of(group)
            st["base"] = {k: like_param(p, v) for k, v in init(local(p)).items()}
            self.store.create(p, st, group)
        elif not isinstance(st["nonfinite_steps"], Tensor):  # an int: saved by earlier code
            st["nonfinite_steps"] = _counter(st["nonfinite_steps"], p)
        return st

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
        self.store.fold_failures()  # (failures counted on the device: into the counters)
        sd = super().state_dict()
        sd["format_version"] = STATE_FORMAT_VERSION
        return with_checksums(sd)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by ``state_dict()``, after checking that it fits this optimizer.

        Raises ``ValueError`` naming the difference when the checkpoint comes from another
        variant or layout (``quant``, ``max_preconditioner_dim``, ...), another model or
        parameter order (shapes differ), fails its checksum (damaged bytes), or holds inf/NaN.
        Every check, the preconditioner blocks a process must hold under ``distributed``
        included, runs before anything changes: when it raises, the state and the param
        groups are as they were. Hooks (``register_load_state_dict_pre_hook`` /
        ``_post_hook``) are called as ``torch.optim`` calls them, the pre-hooks before the
        checks (what they change is checked too). Under ``bits="auto"`` each factor keeps the
        width it was saved with; if that exceeds this optimizer's ``memory_budget``, the
        precision policy re-plans at once.

        ``torch.optim.Optimizer`` would cast every saved tensor to its parameter's dtype, which
        would turn 4-bit codes into floats under bf16 parameters; here tensors are only moved to
        the parameter's device.
        """
        # as torch.optim: the pre-hooks see (and may replace) a shallow copy of the state dict
        # with its state, and run before the checks, so that what they change is checked too
        if isinstance(state_dict, dict):
            state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        merged, ids = check_state_dict(state_dict, self.param_groups)
        self.store.distributor.update_plan(self.param_groups)  # the placement (no state)

        # every parameter state as it will be, the blocks a process holds refused here too,
        # before anything of this optimizer changes
        saved, state, fresh = state_dict["state"], {}, []
        group_of = {p: g for g in merged for p in g["params"]}
        for i, p in ids:
            if i not in saved:
                continue
            st, group = copy_to(saved[i], p.device), group_of[p]
            # (a state of another layout is refused by the next step())
            if st.get("layout") == layout_of(group) and self.store.place_loaded(i, p, st, group):
                fresh.append(p)  # saved without preconditioners: fresh ones once loaded
            state[p] = st

        groups = [{**deepcopy(_values(g)), "params": g["params"]} for g in merged]
        self.__setstate__({"state": defaultdict(dict, state), "param_groups": groups})
        self.store.forget_views()
        self._validated.clear()
        group_of = {p: g for g in self.param_groups for p in g["params"]}
        for p in fresh:
            self.store.create(p, self.state[p], group_of[p])
        self._precision.fit_loaded(self)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # -- reports ----------------------------------------------------------------------------------
    def memory_report(self) -> dict[str, int]:
        """Bytes held by the optimizer state (``tensor.nbytes`` of every stored tensor).

        ``preconditioners``: all factor state, of which ``statistics`` (L, R in the variant's
        form) and ``roots`` (the inverse roots); the rest of it is ``diagnostics`` (a few
        scalars per factor). ``base_state``: the base optimizer's moments. ``total``: all (with
        each parameter's skip counter, 8 bytes).
        ``workspace``: not held, but the most a step may allocate on top of ``total`` for the
        current parameters (its batched stages' temporaries, within ``max_workspace_bytes``;
        more only if one block alone needs more). Under ``torch.distributed``, the bytes this
        rank holds: its own blocks, or its shard under FSDP2 (see ``docs/distributed.md``).

        With ``bits="auto"`` also: ``preconditioners_4bit``, ``preconditioners_8bit`` and
        ``preconditioners_fp32`` (the factors held at each width, their scalars included; they
        add up to ``preconditioners``) and ``memory_budget`` (in bytes, never exceeded by
        ``preconditioners``).
        """
        report = dict.fromkeys(("statistics", "roots", "preconditioners", "base_state"), 0)
        total = 0
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st:
                    total += state_nbytes(st)
                    report["base_state"] += state_nbytes(st["base"])
                    report["preconditioners"] += state_nbytes(st.get("precond"))
        by_bits = dict.fromkeys((32, *AUTO_BITS), 0)
        for e in self.store.entries():
            for k, v in e.factor.nbytes().items():
                report[k] += v
            by_bits[e.factor.bits] = by_bits.get(e.factor.bits, 0) + state_nbytes(e.factor.state)
        report["diagnostics"] = report["preconditioners"] - report["statistics"] - report["roots"]
        report["total"] = total
        report["workspace"] = self.store.workspace()
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
        skipped = _read_counts(
            {
                p: st["nonfinite_steps"]
                for g in self.param_groups
                for p in g["params"]
                if (st := self.state.get(p))
            }
        )
        out["nonfinite_steps"] = sum(skipped.values())
        self.store.fold_failures()
        for e in self.store.entries():
            d = e.factor.diagnostics()
            out["root_failures"] += d["root_failures"]
            out["cholesky_failures"] += d["cholesky_failures"]
            where = dict(
                param=e.index, group=e.group, shape=tuple(e.param.shape), block=e.block, side=e.side
            )
            out["factors"].append({**where, **d, "skipped_steps": skipped[e.param]})
        errors = [d["quant_error"] for d in out["factors"] if d["quant_error"] is not None]
        out["quant_error"] = sum(errors) / len(errors) if errors else None
        if is_adaptive(self.param_groups):
            out["precision"] = self._precision.summary(self, out["factors"])
        return out


class Shampoo4bit(Shampoo):
    """Shampoo with low-bit Cholesky factors and error feedback (``quant="cholesky_ef"``).

    Its defaults beyond ``Shampoo``'s: ``quant="cholesky_ef"``, ``bits="auto"`` and
    ``memory_budget=1/8``. Every factor starts in 4 bits; at each statistics update those
    whose 4-bit storage perturbs their inverse root the most are held in 8 bits, as long as
    the preconditioners hold at most 1/8 of the bytes 32-bit Shampoo's would
    (``docs/adaptive_precision.md``). Where every factor in 4 bits already takes more than
    that (a model whose factors are mostly of order < 64, which stay fp32), every factor is
    simply kept in 4 bits (``bits=4``). On the harness's character transformer this ended
    0.21 % above 32-bit Shampoo's validation loss where 4 bits everywhere ended 1.19 % above
    it, at 8.1x less preconditioner memory than 32-bit Shampoo (4 bits everywhere: 9.1x); on
    its CNN both matched 32-bit Shampoo's accuracy (+0.10 and -0.07 points); 5 seeds,
    ``benchmarks/RESULTS_defaults.md``. Under ``distributed`` the budget applies to each
    process's own blocks; a process whose blocks need more than 1/8 of their 32-bit bytes
    even in 4 bits keeps them all in 4 bits (and warns once).

    Args:
        paper: Paper A's configuration (arXiv 2412.10663) instead: every factor in 4-bit
            CQ+EF (``bits=4``, ``ef_decay=0.9``; the paper does not publish its ``ef_decay``),
            at about 9x less preconditioner memory than 32-bit Shampoo.
        **kwargs: as ``Shampoo``; any given explicitly wins over the defaults above and over
            ``paper``. ``memory_budget`` alone keeps ``bits="auto"`` with that budget (which
            must then hold every factor in 4 bits); ``bits`` given alone is used as given
            (``bits="auto"`` then needs its ``memory_budget``, as in ``Shampoo``).
    """

    #: the default ``memory_budget``: a fraction of 32-bit Shampoo's preconditioner bytes
    DEFAULT_MEMORY_BUDGET = 1 / 8

    def __init__(self, params, lr: float = 1e-3, *, paper: bool = False, **kwargs: Any):
        kwargs.setdefault("quant", "cholesky_ef")
        if paper:
            kwargs.setdefault("bits", 4)
            kwargs.setdefault("ef_decay", 0.9)
        elif "bits" not in kwargs and kwargs["quant"] != "none":
            params = _with_fp32_groups_at_4_bits(params)
            budget = kwargs.get("memory_budget")
            if budget is not None or self._default_budget_fits(params, lr, kwargs):
                kwargs["bits"] = "auto"
                kwargs["memory_budget"] = budget or self.DEFAULT_MEMORY_BUDGET
        super().__init__(params, lr, **kwargs)

    @classmethod
    def _default_budget_fits(cls, params: list, lr: float, kwargs: dict) -> bool:
        """Whether ``DEFAULT_MEMORY_BUDGET`` holds every factor of ``params`` in 4 bits (and
        some group is adaptive), read from an optimizer that allocates no state: the check
        ``bits="auto"`` would make, so that the default never raises where ``bits=4`` works."""
        probe_kwargs = {**kwargs, "bits": "auto", "memory_budget": 1.0}
        probe_kwargs.update(distributed=False, process_group=None)  # no collective calls
        # torch.optim fills each group dict with the defaults: the probe gets its own copies
        groups = [dict(g) if isinstance(g, dict) else g for g in params]
        probe = Shampoo(groups, lr, **probe_kwargs)
        if not is_adaptive(probe.param_groups):
            return False
        report = probe.diagnostics()["precision"]
        return report["all_4bit"] <= int(cls.DEFAULT_MEMORY_BUDGET * report["reference_32bit"])


def _with_fp32_groups_at_4_bits(params) -> list | Tensor:
    """``params`` as a list that can be read twice (a param group's ``"params"`` too); param
    groups with ``quant="none"`` get ``bits=4`` (in a copy of the group), so the default
    ``bits="auto"`` applies to the quantized groups only."""
    if isinstance(params, Tensor):
        return params  # not an iterable of parameters: Optimizer's own error says so
    out = []
    for p in list(params):
        if isinstance(p, dict):
            p = dict(p)
            if not isinstance(p.get("params"), (Tensor, list, tuple, set)):
                p["params"] = list(p.get("params", ()))
            if p.get("quant") == "none":
                p.setdefault("bits", 4)
        out.append(p)
    return out


def graft(
    direction: Tensor, grad: Tensor, grad_norm: Tensor | None = None, sign: float = 1.0
) -> Tensor:
    """Rescale ``direction`` in place to the Frobenius norm of ``grad`` (zero stays zero),
    times ``sign`` (-1 to ascend: ``direction`` was computed from ``grad``, not ``-grad``)."""
    if grad_norm is None:
        grad_norm = grad.norm()
    # a float64 gradient's direction may be huge (entries beyond 1e19): its norm in float64
    norm_d = (
        direction.norm()
        if grad_norm.dtype != torch.float64
        else direction.norm(dtype=torch.float64)
    )
    scale = torch.where(norm_d > 0, grad_norm / norm_d, torch.zeros_like(norm_d))
    return direction.mul_(scale if sign > 0 else scale.neg())


def _grad_norm(g: Tensor) -> Tensor:
    """The Frobenius norm of ``g``: in float64 for a float64 ``g``, otherwise computed in fp32,
    as the preconditioner's math is (inf when its square overflows fp32), without an fp32 copy
    of ``g``."""
    if g.dtype == torch.float64:
        return torch.linalg.vector_norm(g)
    return torch.linalg.vector_norm(g, dtype=torch.float32)


def _reads_are_free(device: torch.device) -> bool:
    """Whether the non-finite check reads its flags on the host at every step: on the CPU a
    read is one of memory, free, while deciding the skip on the device costs ~10 operators
    per parameter; elsewhere a read stalls the launch queue. (Tests switch it off, to run
    the device-side skip on the CPU.)"""
    return device.type == "cpu"


def _statistics_finite(norms: list[Tensor]) -> Tensor:
    """Whether each gradient's statistics may take it, from its norm, decided on the device:
    ``(P,)`` bool, as ``_finite_flags`` decides on the host (the norm finite and, for a float64
    norm, its square in fp32 too)."""
    return torch.stack(
        [n.float().square() if n.dtype == torch.float64 else n for n in norms]
    ).isfinite()


def _finite_flags(
    norms: list[Tensor], counters: list[Tensor | int]
) -> Iterator[tuple[bool, bool, bool]]:
    """``(finite, fp32 square finite, never skipped)`` for each gradient norm and its skip
    counter (an int64 0-d tensor, or an int), read in one host sync: the values themselves,
    stacked in the widest dtype (float32 holds a float32 norm exactly, and a positive count
    stays positive), are judged on the host. Meta tensors have no values: they count as
    finite, as ``torch.optim`` steps them."""
    if not norms or norms[0].device.type == "meta":
        return iter([(True, True, True)] * len(norms))
    held = [c for c in counters if isinstance(c, Tensor)]
    values = iter(torch.stack([*norms, *held]).tolist())
    norm_values = [next(values) for _ in norms]
    out = []
    for n, v, c in zip(norms, norm_values, counters, strict=True):
        count = next(values) if isinstance(c, Tensor) else c
        finite = math.isfinite(v)
        square = _fp32_square_finite(v) if n.dtype == torch.float64 else finite
        out.append((finite, square, count == 0))
    return iter(out)


def _fp32_square_finite(x: float) -> bool:
    """Whether ``x`` rounded to fp32 and squared in fp32 is finite, as
    ``torch.tensor(x).float().square().isfinite()`` says, on the host: the square of an fp32
    value is exact in a Python float, and ``_fp32`` rounds it as fp32 arithmetic does."""
    return math.isfinite(_fp32(_fp32(x) ** 2))


def _fp32(x: float) -> float:
    """``x`` rounded to the nearest fp32 value (inf beyond its range)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:  # the standard format refuses to round to inf
        return math.copysign(math.inf, x)


def _values(group: dict) -> dict:
    """A param group's hyperparameters (everything but its parameters)."""
    return {k: v for k, v in group.items() if k != "params"}


def _unchanged(group: dict, values: dict) -> bool:
    """Whether ``group`` holds the same ``values`` (a copy of its values taken earlier): the
    same objects, or equal ones. A tensor only as the same object: comparing values would
    read it on the host."""
    if len(group) != len(values) + 1:
        return False
    for k, v in values.items():
        now = group.get(k, values)
        if now is not v and (isinstance(now, Tensor) or isinstance(v, Tensor) or now != v):
            return False
    return True


def _base_kwargs(group: dict) -> dict:
    """The base update's arguments that are the same at every step."""
    if group["base"] == "adamw":
        return dict(betas=group["betas"], eps=group["eps"])
    return dict(
        lr=group["lr"],
        momentum=group["momentum"],
        nesterov=group["nesterov"],
        weight_decay=group["weight_decay"],
    )


def _value_kwargs(group: dict) -> dict:
    """What the base update's per-step values are made of (``qshampoo.base.adamw_values``)."""
    keys = ("lr", "betas", "weight_decay", "momentum")
    return {k: group[k] for k in keys}


def _counter(value: int, p: Tensor) -> Tensor:
    """A skip counter of ``p``: an int64 0-d tensor on its (local) device, counted there."""
    return torch.full((), value, dtype=torch.int64, device=local(p).device)


def _read_counts(counters: dict[Tensor, Tensor | int]) -> dict[Tensor, int]:
    """The skip counters' values on the host, one read per device (ints, saved by an older
    version, as they are; meta tensors have no value: 0)."""
    out = {p: c for p, c in counters.items() if not isinstance(c, Tensor)}
    by_device: dict[torch.device, list] = defaultdict(list)
    for p, c in counters.items():
        if isinstance(c, Tensor):
            by_device[c.device].append(p)
    for device, params in by_device.items():
        if device.type == "meta":
            out.update(dict.fromkeys(params, 0))
            continue
        values = torch.stack([counters[p] for p in params]).tolist()
        out.update(zip(params, values, strict=True))
    return out
