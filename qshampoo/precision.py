"""Adaptive precision: 8 bits for the factors where 4 bits cost the most, under a byte budget.

With ``bits="auto"`` every quantized factor starts at 4 bits and records, at each of its
statistics updates, a *precision signal*: how much storing it in 4 bits perturbs its inverse
root. For the Cholesky variants it is ``||diag(C)^-1 dC||_F / sqrt(n)``, the 4-bit rounding
error ``dC`` of each row of the new factor ``C`` relative to that row's pivot
(``CholeskyFactor.root_error_estimate``, O(n^2) on data the update already holds); on the
factors of a small transformer its rank correlation with the true inverse-root error is
0.83-0.94, against 0.32-0.63 for the plain ``||dC|| / ||C||`` (``quant_error``), and it is
about 3x that error (``benchmarks/precision_signals.py``, docs/adaptive_precision.md). VQ and
Paper B's eigenvector variant use the relative 4-bit error of what they quantize.

After each statistics step the optimizer calls :func:`plan`, which chooses the factors to keep
in 8 bits:

1. Every factor costs its 4-bit bytes; ``budget - fixed - sum(4-bit bytes)`` is what
   promotions may spend (``fixed``: every preconditioner byte that is not an adaptive factor,
   and the 4-bit bytes reserved for parameters whose state does not exist yet). Factor bytes
   come from ``qshampoo.memory.factor_bytes``, which ``memory_report()`` equals, so the budget
   holds for the bytes really stored.
2. A factor is a candidate for 8 bits when its signal is at least ``promote_at`` (at 4 bits)
   or, already at 8 bits, at least ``demote_below`` (hysteresis: a factor near the threshold
   does not flip back and forth). Below that, 4 bits are good enough and the bytes are saved.
3. Candidates are taken greedily by signal per extra byte (ties broken by position, so the
   result is a function of the signals alone); a factor already at 8 bits counts its score
   ``1 + margin`` times (a 4-bit factor must be clearly worse to take its place). A
   candidate that does not fit is skipped and smaller ones are still tried.
4. A factor that switched fewer than ``dwell`` of its statistics updates ago keeps its width
   (unless the budget could not hold it otherwise, which only a changed budget can cause).

Switching re-quantizes the factor's whole state through fp32 once (``Factor.set_bits``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

#: the widths an adaptive factor moves between
AUTO_BITS: tuple[int, int] = (4, 8)


@dataclass(frozen=True)
class PrecisionConfig:
    """The policy's constants (``Shampoo(..., precision_config=PrecisionConfig(...))``)."""

    #: a 4-bit factor becomes a candidate for 8 bits at this signal (about 3x the relative
    #: error 4 bits put into its inverse root, for the Cholesky variants)
    promote_at: float = 0.05
    #: an 8-bit factor stays a candidate down to this signal (< promote_at: hysteresis)
    demote_below: float = 0.03
    #: an 8-bit factor's score counts 1 + margin times when ranking (hysteresis)
    margin: float = 0.25
    #: statistics updates a factor keeps its width after a switch
    dwell: int = 2

    def __post_init__(self):
        for name in ("promote_at", "demote_below", "margin"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"PrecisionConfig.{name} must be a number >= 0, got {v!r}")
        if self.demote_below > self.promote_at:
            raise ValueError(
                f"PrecisionConfig.demote_below ({self.demote_below}) must not exceed "
                f"promote_at ({self.promote_at})"
            )
        if isinstance(self.dwell, bool) or not isinstance(self.dwell, int) or self.dwell < 0:
            raise ValueError(f"PrecisionConfig.dwell must be an integer >= 0, got {self.dwell!r}")


@dataclass(frozen=True)
class Candidate:
    """One adaptive factor as the policy sees it."""

    key: Hashable  # its position (param index, block, side): the deterministic tie-break
    bits: int  # its width now
    signal: float  # its precision signal (estimated relative root error at 4 bits)
    bytes4: int  # its bytes at 4 bits and at 8 bits (memory.factor_bytes)
    bytes8: int
    age: int  # statistics updates since its last switch


def plan(
    candidates: Sequence[Candidate], room: int, config: PrecisionConfig = PrecisionConfig()
) -> dict[Hashable, int]:
    """The width of every candidate: 8 for the chosen ones, 4 for the rest.

    ``room``: bytes the candidates may take in all (the budget less every other preconditioner
    byte). The chosen set satisfies ``sum(bytes at the chosen width) <= room`` whenever all
    candidates fit at 4 bits; when they do not, every candidate gets 4 bits.
    """
    bits = {c.key: AUTO_BITS[0] for c in candidates}
    spare = room - sum(c.bytes4 for c in candidates)
    if spare < 0:
        return bits

    def extra(c: Candidate) -> int:
        return max(1, c.bytes8 - c.bytes4)

    # factors that switched recently keep their width while the budget allows
    locked = [c for c in candidates if c.bits == AUTO_BITS[1] and c.age < config.dwell]
    for c in sorted(locked, key=lambda c: _order_key(c, config, extra)):
        if extra(c) <= spare:
            bits[c.key] = AUTO_BITS[1]
            spare -= extra(c)
    held = {c.key for c in locked if bits[c.key] == AUTO_BITS[1]}
    fresh4 = {c.key for c in candidates if c.bits == AUTO_BITS[0] and c.age < config.dwell}

    def wanted(c: Candidate) -> bool:
        if c.key in held or c.key in fresh4:
            return False
        threshold = config.demote_below if c.bits == AUTO_BITS[1] else config.promote_at
        return c.signal >= threshold and c.signal > 0

    for c in sorted(filter(wanted, candidates), key=lambda c: _order_key(c, config, extra)):
        if extra(c) <= spare:
            bits[c.key] = AUTO_BITS[1]
            spare -= extra(c)
    return bits


def _order_key(c: Candidate, config: PrecisionConfig, extra) -> tuple:
    score = c.signal / extra(c)
    if c.bits == AUTO_BITS[1]:
        score *= 1.0 + config.margin
    return (-score, repr(c.key))


def resolve_budget(budget: float | int, reference: int) -> int:
    """``memory_budget`` in bytes: an int is bytes, a float a fraction of ``reference`` (the
    bytes 32-bit Shampoo's preconditioners would take for the same parameters)."""
    if isinstance(budget, float):
        return int(budget * reference)
    return int(budget)


def check_budget(budget) -> None:
    """Raise ``ValueError`` naming ``memory_budget`` unless it is None, a float fraction in
    (0, 1] or a positive int of bytes."""
    if budget is None:
        return
    ok = (
        isinstance(budget, float) and 0.0 < budget <= 1.0
        if isinstance(budget, float)
        else isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1
    )
    if not ok:
        raise ValueError(
            f"invalid memory_budget={budget!r}: must be a fraction in (0, 1] of 32-bit "
            "Shampoo's preconditioner bytes (a float, e.g. 1/7), or a number of bytes (an int "
            ">= 1)"
        )
