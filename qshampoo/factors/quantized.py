"""What every low-bit factor shares: its inverse root stored as a symmetric low-bit matrix.

The root ``L_hat`` is symmetric, so only its strict lower triangle is quantized (row-wise
chunks, algorithm.md section 5) and its diagonal is kept exactly in fp32. Dequantizing gives
``T + T^T + diag``, one vectorized pass per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant import QuantizedTensor, dequantize_symmetric, quantize
from .base import Factor


class QuantizedFactor(Factor):
    """Base of the low-bit variants: ``state["bits"]`` and the quantized root."""

    def init_state(self, statistics: Tensor, root: Tensor) -> None:
        self.state["bits"] = self.config.bits
        self.state["quant_error"] = torch.zeros((), device=root.device)
        self.store_root(root)
        self.init_statistics(statistics)

    def init_statistics(self, statistics: Tensor) -> None:
        raise NotImplementedError

    # -- stored low-bit tensors -----------------------------------------------------------
    def put(self, name: str, q: QuantizedTensor) -> None:
        """Keep ``q``'s tensors in the state as ``{name}_codes``, ``_scales``, ``_diag``."""
        self.state[f"{name}_codes"] = q.codes
        self.state[f"{name}_scales"] = q.scales
        if q.diag is not None:
            self.state[f"{name}_diag"] = q.diag

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

    def store_root(self, root: Tensor) -> None:
        self.put("root", self.quantize(root, layout="tril", exact_diagonal=True))

    def nbytes(self) -> dict[str, int]:
        return {"statistics": self.statistics_bytes(), "roots": self.stored_bytes("root")}

    def statistics_bytes(self) -> int:
        raise NotImplementedError

    def diagnostics(self) -> dict:
        out = super().diagnostics()
        out["quant_error"] = float(self.state["quant_error"])
        out["bits"] = self.state["bits"]
        return out

    def record_quant_error(self, exact: Tensor, stored: Tensor) -> None:
        """Relative Frobenius error of what is stored, ``||x - D(Q(x))|| / ||x||`` (no sync)."""
        err = (exact - stored).norm() / exact.norm().clamp_min(torch.finfo(torch.float32).tiny)
        self.state["quant_error"] = err
