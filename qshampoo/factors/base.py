"""The interface every Kronecker-factor variant implements.

A factor is one side (L or R) of one preconditioner block. It owns its state as a dict of
tensors (and plain numbers) that lives inside the optimizer state, so ``state_dict()`` saves it
and ``load_state_dict()`` restores it; the factor object itself is a thin view over that dict.

The optimizer's store (``qshampoo.store``) only ever calls this interface, so nothing above it
branches on the variant. It groups factors by ``batch_key()`` and hands each batch to a
classmethod of their class:

    cls.update_statistics_batch(factors, grams, hp)  # L <- beta L + (1 - beta) gram
    cls.compute_roots(factors, hp)                   # L_hat <- (L + eps lambda_max I)^(-1/4)
    cls.dense_roots(factors)                         # (B, n, n) fp32 L_hat
    cls.multiply_roots(factors, G, left)             # L_hat G or G R_hat, to precondition with
    cls.workspace_bytes(phase, order, config)        # the temporaries of one factor in a batch
    factor.nbytes()                                  # bytes the stored state really holds

``factor.update_statistics(gram, hp)`` updates one factor.

Failure policy, shared by every variant (docs/robustness.md): a root computation or Cholesky
factorisation that fails is retried in float64 and with more damping (``inverse_root_ex``,
``cholesky_with_retry``); if it still fails the factor keeps its previous root/factor and
records the failure (``record_root_result``, ``record_cholesky_result``). The optimizer then
calls ``check_failures``, which raises ``PreconditionerError`` once one factor has failed
``max_consecutive_failures`` times in a row.

A statistics update on an accelerator reads nothing back (``update_statistics_batch`` with a
``finite`` mask): the whole batch is computed, and a factor whose gradient was non-finite or
whose factorisation failed keeps its previous state (``assign_rows(..., keep=)``); the retry
ladder, which needs the host, is skipped, and the failures are counted on the device
(``count_cholesky_failures``) until ``fold_failures`` adds them to the counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..linalg import all_finite, cholesky_lower
from ..roots import DAMPING_GROWTH, DAMPING_RETRIES, inverse_root_ex


@dataclass(frozen=True)
class FactorConfig:
    """How a factor is stored; fixed when its state is created."""

    bits: int = 4
    block_size: int = 64
    codebook: str = "linear2"
    #: low-bit factors record a precision signal and may change ``bits`` (``bits="auto"``)
    adaptive: bool = False


@dataclass(frozen=True)
class StepHyper:
    """Hyperparameters a factor reads at each step (from the param group, so schedulable)."""

    stat_decay: float = 0.95
    matrix_eps: float = 1e-6
    ef_decay: float = 0.9
    root_method: str = "eigh"
    cholesky_damping: str = "carry"


class Factor:
    """Base class: fp32-exact defaults for everything a variant does not override."""

    #: the ``quant=`` name of the variant
    kind = "base"

    def __init__(self, state: dict, config: FactorConfig):
        self.state = state
        self.config = config

    @property
    def order(self) -> int:
        return int(self.state["order"])

    @property
    def bits(self) -> int:
        """Bits per stored element of the factor's quantized state (32: kept in fp32)."""
        return 32

    @property
    def adaptive(self) -> bool:
        """Whether the precision policy may change this factor's width (``bits="auto"``)."""
        return False

    def batch_key(self) -> tuple:
        """Factors with equal keys share one batched root dequantization (same class, order
        and storage format)."""
        return (type(self), self.order)

    def set_bits(self, bits: int) -> bool:
        """Store the factor at ``bits`` from now on (low-bit variants only; see
        ``QuantizedFactor.set_bits``). Returns whether anything changed."""
        if bits == self.bits:
            return False
        raise ValueError(f"a {self.kind!r} factor is stored in fp32; it cannot use {bits} bits")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def new(cls, order: int, config: FactorConfig, device: torch.device, eps: float) -> Factor:
        """A fresh factor of ``order`` with statistics ``eps * I`` and root ``I``."""
        state: dict = {"kind": cls.kind, "order": order, **new_health_state()}
        factor = cls(state, config)
        factor.init_state(eps, torch.device(device))
        return factor

    def init_state(self, eps: float, device: torch.device) -> None:
        """The state of statistics ``eps * I`` and root ``I`` (built directly where the stored
        form allows: a model's first step creates every factor, and temporaries of each
        factor's size between the new state tensors would fragment the heap)."""
        raise NotImplementedError

    # -- the interface --------------------------------------------------------------------
    def update_statistics(self, gram: Tensor, hp: StepHyper) -> None:
        """EMA update with ``gram`` (``G G^T`` or ``G^T G``, fp32 ``(order, order)``)."""
        type(self).update_statistics_batch([self], gram.float()[None].clone(), hp)

    @classmethod
    def update_statistics_batch(
        cls, factors: list[Factor], grams: Tensor, hp: StepHyper, finite: Tensor | None = None
    ) -> None:
        """``update_statistics`` of factors with one ``batch_key()``: ``grams`` ``(B, n, n)``
        fp32, one per factor, owned by this call (it may overwrite and free them). Variants
        override it with batched calls; this default folds one factor at a time.

        ``finite``: None, or a ``(B,)`` bool device tensor (an accelerator's statistics step,
        which reads nothing back): a factor where it is False (its gradient was not finite)
        keeps its state as it was, selected on the device. Here each factor's state tensors
        are copied before its fold and selected back after it."""
        for i, (f, gram) in enumerate(zip(factors, grams.unbind(), strict=True)):
            if finite is None:
                f.fold(gram, hp)
                continue
            before = {k: v.clone() for k, v in f.state.items() if isinstance(v, Tensor)}
            f.fold(gram, hp)
            for k, old in before.items():
                f.state[k].copy_(torch.where(finite[i], f.state[k], old))

    def fold(self, gram: Tensor, hp: StepHyper) -> None:
        """The statistics update of this factor alone (for the default batch loop)."""
        raise NotImplementedError

    def statistics(self) -> Tensor:
        """The fp32 ``(order, order)`` statistics matrix this factor represents."""
        raise NotImplementedError

    @classmethod
    def stacked_statistics(cls, factors: list[Factor]) -> Tensor:
        """``statistics()`` of factors with one ``batch_key()``, as a new ``(B, n, n)``."""
        return torch.stack([f.statistics() for f in factors])

    def root(self) -> Tensor:
        """The fp32 ``(order, order)`` inverse root to precondition with."""
        raise NotImplementedError

    def store_root(self, root: Tensor) -> None:
        raise NotImplementedError

    @classmethod
    def dense_roots(cls, factors: list[Factor], compiled: bool = False) -> Tensor:
        """The roots of factors with one ``batch_key()`` as one ``(B, n, n)`` fp32 tensor.

        Variants that store roots in low bits override this to dequantize them in one batched
        pass (``compiled``: with the ``torch.compile``d kernel); each root is dequantized
        once per step and never kept.
        """
        if len(factors) == 1:
            return factors[0].root()[None]
        return torch.stack([f.root() for f in factors])

    @classmethod
    def multiply_roots(
        cls, factors: list[Factor], G: Tensor, left: bool, compiled: bool = False
    ) -> Tensor:
        """``L_hat G`` (``left``) or ``G R_hat`` of each matrix of ``G`` ``(B, n, m)`` fp32 by
        the roots of ``factors`` (one ``batch_key()``), as a new ``(B, n, m)`` tensor.

        Here through ``dense_roots``; low-bit variants decode large roots a strip of rows at a
        time instead (``QuantizedFactor.multiply_roots``)."""
        roots = cls.dense_roots(factors, compiled)
        return torch.bmm(roots, G) if left else torch.bmm(G, roots)

    def nbytes(self) -> dict[str, int]:
        """Bytes held, split into ``"statistics"`` and ``"roots"``."""
        raise NotImplementedError

    # -- the step's temporaries ---------------------------------------------------------------
    #: fp32 ``(order, order)`` matrices one factor of a batch allocates at most, by stage:
    #: ``statistics`` (its gram included), ``roots`` (the eigendecomposition's own workspace
    #: aside, added by ``workspace_bytes``) and ``precondition`` (its dense root)
    TEMPORARIES = {"statistics": 2.0, "roots": 6.0, "precondition": 1.0}
    #: bytes on top of the matrices (index sets, norms, small tiles), per factor
    OVERHEAD = 32768

    @classmethod
    def workspace_bytes(
        cls, phase: str, order: int, config: FactorConfig, whole: bool = False
    ) -> int:
        """Upper bound of the bytes one factor of this class and ``order`` adds to a batched
        ``phase`` ("statistics", "roots" or "precondition"), LAPACK's workspace included.
        ``whole``: preconditioning decodes low-bit roots whole (``compile=True``, or the Triton
        kernels), not a strip of rows at a time (``QuantizedFactor.multiply_roots``)."""
        n2 = order * order
        extra = 4 * (2 * n2 + 6 * order + 1) if phase == "roots" else 0  # syevd's work array
        return int(4 * n2 * cls.TEMPORARIES[phase]) + extra + cls.OVERHEAD

    def workspace(self, phase: str, whole: bool = False) -> int:
        return self.workspace_bytes(phase, self.order, self.config, whole)

    # -- roots, batched over factors of the same variant and order ------------------------
    @classmethod
    def inverse_roots(cls, factors: list[Factor], hp: StepHyper) -> tuple[Tensor, Tensor]:
        """Inverse 4th roots of same-order factors of this class, in one batched call.

        Returns ``(roots (B, n, n) fp32, ok (B,) bool)``. A root that fails is retried in
        float64 and with more damping (``inverse_root_ex``); the damping each root ended up
        with is kept as ``state["root_damping"]`` (for ``diagnostics()``), nothing else is
        stored.
        """
        roots, ok, damping = inverse_root_ex(
            cls.stacked_statistics(factors),
            p=4,
            eps=hp.matrix_eps,
            method=hp.root_method,
            overwrite=True,
        )
        for f, d in zip(factors, damping, strict=True):
            assign(f.state, "root_damping", d)
        return roots, ok

    @classmethod
    def compute_roots(cls, factors: list[Factor], hp: StepHyper) -> None:
        """Recompute and store the roots; a factor whose root fails keeps its previous one
        and counts the failure."""
        roots, ok = cls.inverse_roots(factors, hp)
        good = ok.tolist()
        for f, g in zip(factors, good, strict=True):
            f.record_root_result(g)
        if all(good):
            cls.store_roots(factors, roots)
        elif any(good):
            keep = [i for i, g in enumerate(good) if g]
            cls.store_roots([factors[i] for i in keep], roots[keep])

    @classmethod
    def store_roots(cls, factors: list[Factor], roots: Tensor) -> None:
        """``store_root`` of each factor with its root of ``roots`` ``(B, n, n)``; low-bit
        variants quantize the batch in one pass."""
        for f, r in zip(factors, roots, strict=True):
            f.store_root(r)

    # -- health: failures, damping, quantization error ------------------------------------
    def diagnostics(self) -> dict:
        """Per-factor health: failures, damping used and (4-bit) quantization error.

        Variants that quantize store their last quantization error (relative Frobenius error
        of what they re-quantized, a float or 0-d tensor) as ``state["quant_error"]``; the
        Cholesky variants report their damping through ``record_cholesky_result``.
        Failures counted on the device are read first (``fold_failures``).
        """
        fold_failures([self])
        st = self.state
        return {
            "kind": self.kind,
            "order": self.order,
            "root_failures": st["root_failures"],
            "cholesky_failures": st["cholesky_failures"],
            "consecutive_root_failures": st["consecutive_root_failures"],
            "consecutive_cholesky_failures": st["consecutive_cholesky_failures"],
            "root_damping": _as_float(st["root_damping"]),
            "cholesky_damping": _as_float(st["cholesky_damping"]),
            "quant_error": _as_float(st.get("quant_error")),
        }

    def record_root_result(self, ok: bool, damping: float | Tensor | None = None) -> None:
        """Count a root computation's outcome; ``damping`` is the relative damping it used."""
        self._record("root", ok, damping)

    def record_cholesky_result(self, ok: bool, damping: float | Tensor | None = None) -> None:
        """Count a Cholesky factorisation's outcome; ``damping``: what the diagonal got."""
        self._record("cholesky", ok, damping)

    def _record(self, what: str, ok: bool, damping: float | None) -> None:
        st = self.state
        if damping is not None:  # a float, or a 0-d tensor (no host sync)
            assign(st, f"{what}_damping", damping)
        if ok:
            st[f"consecutive_{what}_failures"] = 0
        else:
            st[f"{what}_failures"] += 1
            st[f"consecutive_{what}_failures"] += 1

    def failure_streak(self) -> tuple[str, int]:
        """The longest current run of failures of this factor: ``("root"|"cholesky", count)``,
        as the counters hold it (failures counted on the device and not yet folded in by
        ``fold_failures`` are not read here: this is asked at every due step)."""
        r = self.state["consecutive_root_failures"]
        c = self.state["consecutive_cholesky_failures"]
        return ("cholesky", c) if c > r else ("root", r)


def assign_rows(states: list[dict], key: str, batch: Tensor, keep: Tensor | None = None) -> None:
    """``assign(state, key, row)`` for each state and row of ``batch`` ``(B, ...)``, in one
    batched copy where the states already hold tensors of the rows' shape (the usual case:
    the number of operators then does not grow with ``B``); a state that holds none gets a
    tensor of its own (no view into the batch: its ``nbytes`` is what it keeps alive).

    ``keep``: a ``(B,)`` bool tensor; where it is False the state keeps its previous row
    (``kept_rows``: every state must then hold one of the row's shape)."""
    if keep is not None:
        batch = kept_rows(states, key, batch, keep)
    rows = batch.unbind(0)
    dst, src = [], []
    for st, row in zip(states, rows, strict=True):
        old = st.get(key)
        if (
            isinstance(old, Tensor)
            and old.shape == row.shape
            and old.dtype == row.dtype
            and old.device == row.device
        ):
            dst.append(old)
            src.append(row)
        else:
            st[key] = row.clone()
    if dst:
        torch._foreach_copy_(dst, src)


def kept_rows(states: list[dict], key: str, batch: Tensor, keep: Tensor) -> Tensor:
    """``batch`` ``(B, ...)`` with its rows where the ``(B,)`` bool ``keep`` is False replaced by
    the states' current ``key``: decided on the device, by a selection (a NaN row must not
    reach the state, and ``NaN * 0`` is NaN: never a multiplication by a 0 weight). A state
    without a tensor of the row's shape (a diagnostic saved as a number by older code) has no
    previous row to keep: it gets the new one."""
    rows = batch.unbind(0)
    old = torch.stack(
        [
            st[key] if isinstance(st.get(key), Tensor) and st[key].shape == row.shape else row
            for st, row in zip(states, rows, strict=True)
        ]
    )
    return torch.where(keep.view(-1, *([1] * (batch.dim() - 1))), batch, old)


def assign(state: dict, key: str, value) -> None:
    """``state[key] = value``, written into the tensor already there when it has the same
    shape, dtype and device.

    A factor's state tensors then keep their memory from step to step: allocating new ones at
    every update, between the step's large temporaries, fragments the heap and the process
    holds far more memory than the step needs (on the CPU, 4x the temporaries measured on
    ViT-Small, ``benchmarks/peak_memory.py``).
    """
    old = state.get(key)
    if (
        isinstance(old, Tensor)
        and isinstance(value, Tensor)
        and old.shape == value.shape
        and old.dtype == value.dtype
        and old.device == value.device
    ):
        old.copy_(value)
    else:
        state[key] = value


class PreconditionerError(RuntimeError):
    """A preconditioner factor failed ``max_consecutive_failures`` times in a row."""


def new_health_state() -> dict:
    """The failure counters and damping every factor's state starts with."""
    return {
        "root_failures": 0,
        "cholesky_failures": 0,
        "consecutive_root_failures": 0,
        "consecutive_cholesky_failures": 0,
        "root_damping": None,
        "cholesky_damping": None,
    }


#: a factor's Cholesky failures counted on the device since they were last read, an int64
#: ``(3,)`` tensor: failures, failures since the last success, and whether one succeeded
#: (0/1). Never in a checkpoint: ``fold_failures`` adds it to the counters and removes it.
PENDING_FAILURES = "pending_cholesky_failures"


def count_cholesky_failures(factors: list[Factor], ok: Tensor, finite: Tensor) -> None:
    """Count the outcome of a batch's factorisations on the device (no host read): ``ok``
    ``(B,)`` where one succeeded, among the factors whose update was made (``finite``
    ``(B,)``; the others neither fail nor succeed). ``fold_failures`` reads them."""
    states = [f.state for f in factors]
    for st in states:
        if PENDING_FAILURES not in st:
            st[PENDING_FAILURES] = torch.zeros(3, dtype=torch.int64, device=ok.device)
    pending = torch.stack([st[PENDING_FAILURES] for st in states])
    failed, succeeded = finite & ~ok, finite & ok
    count, tail, reset = pending.unbind(1)
    new = torch.stack(
        [count + failed, torch.where(succeeded, 0, tail + failed), reset | succeeded], 1
    )
    torch._foreach_copy_([st[PENDING_FAILURES] for st in states], list(new.unbind()))


def fold_failures(factors: Iterable[Factor]) -> bool:
    """Add the failures counted on the device (``count_cholesky_failures``) to the factors'
    counters, read in one host sync per device, and forget them. Returns whether a factor
    had any to add."""
    by_device: dict[torch.device, list[Factor]] = {}
    for f in factors:
        pending = f.state.get(PENDING_FAILURES)
        if pending is not None:
            by_device.setdefault(pending.device, []).append(f)
    for held in by_device.values():
        values = torch.stack([f.state.pop(PENDING_FAILURES) for f in held]).tolist()
        for f, (count, tail, reset) in zip(held, values, strict=True):
            st = f.state
            st["cholesky_failures"] += count
            streak = st["consecutive_cholesky_failures"]
            st["consecutive_cholesky_failures"] = tail if reset else streak + tail
    return bool(by_device)


def check_failures(
    factors: Iterable[tuple[Factor, Callable[[], str]]],
    limit: int,
    advice: str = "",
    retried: bool = True,
) -> None:
    """Raise ``PreconditionerError`` if a factor has failed ``limit`` times in a row.

    ``factors`` pairs each factor with a function that describes where it is (called only to
    build the message). ``limit == 0`` never raises. ``retried=False``: the failures were
    counted on the device, where the retry ladder is not run (the message says so).
    """
    if limit <= 0:
        return
    for f, where in factors:
        what, streak = f.failure_streak()
        if streak < limit:
            continue
        op = "inverse root" if what == "root" else "Cholesky factorisation"
        how = (
            f"each time in float64 too, with up to {DAMPING_GROWTH**DAMPING_RETRIES:g}x the damping"
            if retried
            else "at statistics steps on an accelerator, where it is not retried in float64 "
            "or with more damping"
        )
        raise PreconditionerError(
            f"{where()}: the {op} of its {f.kind!r} factor of order {f.order} failed {streak} "
            f"times in a row ({how}), so this block "
            f"is preconditioned with a stale value. The statistics are most likely too "
            f"ill-conditioned or too large: {advice}lower the learning rate or clip gradients. "
            "To keep training on the last good preconditioner instead, pass "
            "max_consecutive_failures=0."
        )


def cholesky_with_retry(A: Tensor, damping: Tensor | float) -> tuple[Tensor, Tensor, list[float]]:
    """Lower Cholesky factors of ``A + damping * I`` for a batch ``(b, n, n)``, with retries.

    ``damping`` is a float or a ``(b,)`` tensor of absolute diagonal shifts. A factorisation
    that fails (``cholesky_ex`` info > 0, or a non-finite factor) is retried in float64 with
    the same damping, then in float64 with ``DAMPING_GROWTH`` times more (starting from at
    least float32's resolution of the diagonal), ``DAMPING_RETRIES`` times.

    Returns ``(C, ok, damping_used)``: fp32 factors (entries where ``ok`` is False are
    undefined: keep the previous factor and call ``record_cholesky_result(False)``), a
    ``(b,)`` bool mask, and per matrix the damping of the attempt that succeeded (or of the
    last one tried).
    """
    C, ok, d, _ = cholesky_retry_ex(A, damping)
    return C, ok, d.tolist()


def cholesky_retry_ex(
    A: Tensor, damping: Tensor | float, retry: bool = True
) -> tuple[Tensor, Tensor, Tensor, bool | None]:
    """``cholesky_with_retry`` with the damping used as a float64 ``(b,)`` tensor, and whether
    every first attempt succeeded: read with the one host sync this costs when nothing fails,
    so that the caller need not read ``ok`` again. ``retry=False``: the first attempt only,
    nothing read back (the ladder needs the host), and None for that flag."""
    A = A.float()
    b = A.shape[0]
    d = torch.as_tensor(damping, dtype=torch.float64, device=A.device).expand(b).clone()
    C, ok = _cholesky(_add_to_diagonal(A, d.float()))
    if not retry:
        return C, ok, d, None
    all_ok = bool(ok.all())
    if not all_ok:
        # escalation starts from at least float32's resolution of the diagonal, so that a zero
        # damping grows too; one matrix at a time (failures are rare; this bounds the float64
        # copies to one matrix)
        diag = A.diagonal(dim1=-2, dim2=-1).abs().amax(-1).double().nan_to_num(0.0, 0.0, 0.0)
        floor = diag * torch.finfo(A.dtype).eps
        for i in (~ok).nonzero().flatten().tolist():
            for k in range(1 + DAMPING_RETRIES):
                if k > 0:
                    d[i] = torch.maximum(d[i], floor[i]) * DAMPING_GROWTH
                C64, ok64 = _cholesky(_add_to_diagonal(A[i : i + 1].double(), d[i : i + 1]))
                C32 = C64.float()
                if bool(ok64.item() and all_finite(C32).item()):
                    C[i] = C32[0]
                    ok[i] = True
                    break
    return C, ok, d, all_ok


def _cholesky(A: Tensor) -> tuple[Tensor, Tensor]:
    C, info = cholesky_lower(A)  # row-major, which the quantizer reads row by row
    return C, (info == 0) & all_finite(C)


def _add_to_diagonal(A: Tensor, d: Tensor) -> Tensor:
    """``A + d I`` for a batch ``(b, n, n)`` and shifts ``(b,)``, as a new tensor (a copy and
    ``n`` additions, where ``d * eye`` would be three passes over ``n^2`` entries)."""
    out = A.clone()
    out.diagonal(dim1=-2, dim2=-1).add_(d[:, None])
    return out


def _as_float(x) -> float | None:
    if x is None:
        return None
    return float(x.item() if isinstance(x, Tensor) else x)
