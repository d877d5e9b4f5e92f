"""What every low-bit factor shares: its inverse root stored as a symmetric low-bit matrix.

The root ``L_hat`` is symmetric, so only its strict lower triangle is quantized (row-wise
chunks, algorithm.md section 5) and its diagonal is kept exactly in fp32. Dequantizing gives
``T + T^T + diag``, one vectorized pass per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant import (
    SUPPORTED_BITS,
    QuantizedTensor,
    dequantize,
    dequantize_symmetric,
    encode,
    num_chunks,
    pack,
    quantize,
    quantized_zeros,
    strip_rows,
    symmetric_row_strips,
    triangle,
)
from .base import Factor, FactorConfig, assign, assign_rows


class QuantizedFactor(Factor):
    """Base of the low-bit variants: ``state["bits"]`` and the quantized root."""

    #: a dense root is decoded into a new matrix through half a matrix of code values
    #: (the defaults of VQ: measured at most 8.29 and 4.95 at orders 64-1200,
    #: benchmarks/temporaries.py)
    TEMPORARIES = {"statistics": 8.5, "roots": 5.0, "precondition": 1.75}
    #: widths other than 4 and 8 bits are packed through a stream of one byte per bit
    #: (``quant.packing``): this many fp32 ``(order, order)`` matrices more where a stage packs
    #: (measured at 3 bits: 0.98 more for CQ+EF's statistics; decoding alone, 0.12:
    #: ``OVERHEAD``'s; benchmarks/temporaries.py)
    GENERIC_PACKING = 2.0
    #: orders up to ``quant.triangle.MAP_MAX_ORDER`` are coded whole (index maps), not a piece
    #: of tiles at a time: this many fp32 ``(order, order)`` matrices more at the statistics
    #: step (measured for CQ+EF at orders 64-256: 1.2-1.6 more than the tile path with torch
    #: 2.13 and 2.6, ``python benchmarks/temporaries.py --orders 64,128,200,256``)
    MAPPED_CODING = 1.75

    #: a root decoded a strip of rows at a time (``quant.strip_rows``): fp32 ``(rows, order)``
    #: matrices one factor allocates at most: the strip and the values of its tiles (2), their
    #: code indices (int32 per byte: 0.5 at 4 bits; 1.0 at 8 bits; 1.25 at others, unpacked
    #: first) and ``8 / block_size`` for the tiles' scales and indices; ``(block_size, order)``
    #: ones for the last tile row's values and the diagonal tiles (3); and a batch's stacked
    #: copy of the stored roots (measured: at most 0.94 of this, orders 300-2048, block sizes
    #: 8-64, 3-8 bits, ``python benchmarks/temporaries.py --strips``)
    STRIP_TEMPORARIES = {"rows": 2.0, "per_chunk": 8.0, "block_size": 3.0}
    STRIP_CODE_INDEX = {4: 0.5, 8: 1.0}

    @classmethod
    def workspace_bytes(
        cls, phase: str, order: int, config: FactorConfig, whole: bool = False
    ) -> int:
        rows = None if whole else strip_rows(order, config.block_size)
        if phase == "precondition" and rows is not None:
            c, s = cls.STRIP_TEMPORARIES, config.block_size
            per_row = c["rows"] + cls.STRIP_CODE_INDEX.get(config.bits, 1.25) + c["per_chunk"] / s
            strip = 4 * order * (rows * per_row + s * c["block_size"])
            chunks = num_chunks((order, order), layout="tril", block_size=s)
            stored = order * (order - 1) // 2 * config.bits // 8 + 4 * (chunks + order) + 1
            return int(strip) + stored + cls.OVERHEAD
        packs = phase != "precondition" and config.bits not in (4, 8)
        extra = int(4 * order * order * cls.GENERIC_PACKING) if packs else 0
        if phase == "statistics" and order <= triangle.MAP_MAX_ORDER:
            extra += int(4 * order * order * cls.MAPPED_CODING)
        return super().workspace_bytes(phase, order, config) + extra

    def init_state(self, eps: float, device: torch.device) -> None:
        self.state["bits"] = self.config.bits
        self.state["quant_error"] = torch.zeros((), device=device)
        if self.config.adaptive:
            self.state.update(new_precision_state(device))
        # the root I: a zero strict lower triangle, ones on the diagonal
        ones = torch.ones(self.order, device=device)
        self.put("root", self.zeros((self.order, self.order), "tril", ones))
        self.init_statistics(eps, device)

    def init_statistics(self, eps: float, device: torch.device) -> None:
        """The stored statistics ``eps * I``."""
        raise NotImplementedError

    def zeros(self, shape: tuple[int, int], layout: str, diag: Tensor | None) -> QuantizedTensor:
        """The quantized form of zeros of ``shape`` (with ``diag``), at this factor's format."""
        return quantized_zeros(
            shape,
            diag,
            layout=layout,
            block_size=self.config.block_size,
            codebook=self.config.codebook,
            bits=self.state["bits"],
            device=diag.device if diag is not None else None,
        )

    @property
    def bits(self) -> int:
        return int(self.state["bits"])

    def batch_key(self) -> tuple:
        return (type(self), self.order, self.bits)

    # -- precision --------------------------------------------------------------------------
    def set_bits(self, bits: int) -> bool:
        """Store this factor at ``bits`` from now on; returns whether anything changed.

        Its whole state (the statistics in the variant's form, the Cholesky error state, the
        root) is dequantized to fp32 once and re-quantized at the new width, so what the
        factor represents changes by at most one quantization error at the new width.
        """
        if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
        if bits == self.bits:
            return False
        root = self.root()
        dense = self.dense_statistics()
        self.state["bits"] = bits
        self.store_root(root)
        self.store_statistics(dense)
        return True

    @property
    def adaptive(self) -> bool:
        return "precision_signal" in self.state

    def record_precision_signal(self, signal: Tensor) -> None:
        """Keep ``signal`` (a 0-d tensor, no host sync) for the precision policy and count the
        statistics update; a no-op unless the factor is adaptive."""
        if self.adaptive:
            assign(self.state, "precision_signal", signal)
            self.state["bits_age"] += 1

    @classmethod
    def record_precision_signals(
        cls, factors: list[QuantizedFactor], signals: Tensor, keep: Tensor | None = None
    ) -> None:
        """``record_precision_signal`` of each factor with its signal of ``signals`` ``(B,)``;
        with ``keep`` ``(B,)`` bool, in one batched copy, and a factor where it is False keeps
        its previous signal (its age, a host count, counts the statistics step all the same:
        which factors were left out is known on the device only)."""
        if keep is None:
            for f, sig in zip(factors, signals, strict=True):
                f.record_precision_signal(sig)
            return
        assign_rows([f.state for f in factors], "precision_signal", signals, keep)
        for f in factors:
            f.state["bits_age"] += 1

    def precision_probe(self, x: Tensor, layout: str, exact_diagonal: bool = False) -> Tensor:
        """Relative Frobenius error of ``x`` stored at 4 bits (whatever ``bits`` is now), the
        default precision signal; one extra quantization of ``x``."""
        q = quantize(
            x,
            block_size=self.config.block_size,
            codebook=self.config.codebook,
            bits=4,
            exact_diagonal=exact_diagonal,
            layout=layout,
        )
        return _relative_error(x, dequantize(q))

    def dense_statistics(self) -> dict[str, Tensor]:
        """The stored statistics state, dequantized to fp32 (for ``set_bits``)."""
        raise NotImplementedError

    def store_statistics(self, dense: dict[str, Tensor]) -> None:
        """Quantize ``dense_statistics()``'s output at the current ``bits`` and keep it."""
        raise NotImplementedError

    # -- stored low-bit tensors -----------------------------------------------------------
    def put(self, name: str, q: QuantizedTensor) -> None:
        """Keep ``q``'s tensors in the state as ``{name}_codes``, ``_scales``, ``_diag``."""
        assign(self.state, f"{name}_codes", q.codes)
        assign(self.state, f"{name}_scales", q.scales)
        if q.diag is not None:
            assign(self.state, f"{name}_diag", q.diag)

    def get(self, name: str, layout: str, shape: tuple[int, ...]) -> QuantizedTensor:
        return QuantizedTensor(
            codes=self.state[f"{name}_codes"],
            scales=self.state[f"{name}_scales"],
            diag=self.state.get(f"{name}_diag"),
            shape=shape,
            layout=layout,
            block_size=self.config.block_size,
            codebook=self.config.codebook,
            bits=self.state["bits"],
        )

    def quantize(self, x: Tensor, layout: str = "full", exact_diagonal: bool = False):
        return quantize(
            x,
            block_size=self.config.block_size,
            codebook=self.config.codebook,
            bits=self.state["bits"],
            exact_diagonal=exact_diagonal,
            layout=layout,
        )

    def stored_bytes(self, name: str) -> int:
        return sum(
            self.state[k].nbytes
            for k in (f"{name}_codes", f"{name}_scales", f"{name}_diag")
            if k in self.state
        )

    # -- the root -------------------------------------------------------------------------
    def root(self) -> Tensor:
        n = self.order
        return dequantize_symmetric(self.get("root", "tril", (n, n)))

    @classmethod
    def dense_roots(cls, factors: list[Factor], compiled: bool = False) -> Tensor:
        n = factors[0].order
        roots = [f.get("root", "tril", (n, n)) for f in factors]
        return dequantize_symmetric(roots, compiled=compiled)

    @classmethod
    def multiply_roots(
        cls, factors: list[Factor], G: Tensor, left: bool, compiled: bool = False
    ) -> Tensor:
        """``L_hat G`` or ``G R_hat`` with each root decoded a strip of rows at a time into a
        reused buffer (``quant.symmetric_row_strips``) where it is larger than a strip: rows
        ``r0:r1`` of ``L_hat G`` are ``L_hat[r0:r1] G``, columns ``c0:c1`` of ``G R_hat`` are
        ``G R_hat[c0:c1]^T`` (``R_hat`` is symmetric). Strips of whole tile rows, tens of rows
        high, give the bits of one matmul (``benchmarks/strip_matmul.py``). ``compiled``, and
        the Triton kernel, decode whole roots (``dense_roots``)."""
        n = factors[0].order
        strips = None
        if not compiled:
            strips = symmetric_row_strips([f.get("root", "tril", (n, n)) for f in factors])
        if strips is None:
            return super().multiply_roots(factors, G, left, compiled)
        out = torch.empty_like(G)
        for r0, r1, rows in strips:
            if left:
                torch.bmm(rows, G, out=out[:, r0:r1])
            else:
                torch.bmm(G, rows.mT, out=out[:, :, r0:r1])
        return out

    def store_root(self, root: Tensor) -> None:
        self.put("root", self.quantize(root, layout="tril", exact_diagonal=True))

    @classmethod
    def store_roots(cls, factors: list[Factor], roots: Tensor) -> None:
        """Quantize the batch ``roots`` ``(B, n, n)`` in one pass (what ``store_root`` stores
        for each): the strict lower triangles in low bits, the diagonals exact."""
        first = factors[0]
        bits = first.state["bits"]
        codes, scales = encode(
            roots,
            layout="tril",
            block_size=first.config.block_size,
            codebook=first.config.codebook,
            bits=bits,
        )
        states = [f.state for f in factors]
        assign_rows(states, "root_codes", pack(codes, bits))
        assign_rows(states, "root_scales", scales)
        assign_rows(states, "root_diag", roots.diagonal(dim1=-2, dim2=-1))

    def nbytes(self) -> dict[str, int]:
        return {"statistics": self.statistics_bytes(), "roots": self.stored_bytes("root")}

    def statistics_bytes(self) -> int:
        raise NotImplementedError

    def diagnostics(self) -> dict:
        out = super().diagnostics()
        out["quant_error"] = float(self.state["quant_error"])
        out["bits"] = self.state["bits"]
        if self.adaptive:
            out["precision_signal"] = float(self.state["precision_signal"])
            out["promotions"] = self.state["promotions"]
            out["demotions"] = self.state["demotions"]
        return out

    def record_quant_error(self, exact: Tensor, stored: Tensor) -> None:
        """Relative Frobenius error of what is stored, ``||x - D(Q(x))|| / ||x||`` (no sync)."""
        assign(self.state, "quant_error", _relative_error(exact, stored))


def _relative_error(exact: Tensor, stored: Tensor) -> Tensor:
    return (exact - stored).norm() / exact.norm().clamp_min(torch.finfo(torch.float32).tiny)


def new_precision_state(device) -> dict:
    """What an adaptive factor keeps for the precision policy (``qshampoo.precision``): its
    latest signal, statistics updates since its last switch, and its switch counts."""
    return {
        "precision_signal": torch.zeros((), device=device),
        "bits_age": 0,
        "promotions": 0,
        "demotions": 0,
    }
