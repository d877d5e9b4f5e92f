"""qshampoo: Shampoo with 4-bit preconditioners (quantized Cholesky factors + error feedback)."""

from .factors import PreconditionerError
from .optimizer import Shampoo, Shampoo4bit

__all__ = ["PreconditionerError", "Shampoo", "Shampoo4bit"]
__version__ = "0.1.0"
