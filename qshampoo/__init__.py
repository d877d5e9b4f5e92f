"""qshampoo: Shampoo with 4-bit preconditioners (quantized Cholesky factors + error feedback)."""

# The public submodules, so that `import qshampoo; qshampoo.metrics.inverse_root_error(...)`
# works. Only the torch-only core: the harness (`qshampoo.bench`), which needs the `bench` extra
# and is slow to import, stays out until it is imported by name.
from . import metrics, precision, quant
from .factors import PreconditionerError
from .optimizer import Shampoo, Shampoo4bit

__all__ = ["PreconditionerError", "Shampoo", "Shampoo4bit", "metrics", "precision", "quant"]
__version__ = "0.1.0"
