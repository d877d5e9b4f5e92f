"""Block-wise low-bit quantization: codebooks, bit packing, quantize / dequantize."""

from .codebooks import CODEBOOK_NAMES, SUPPORTED_BITS, codebook, max_rounding_error
from .packing import pack, packed_numel, unpack

__all__ = [
    "CODEBOOK_NAMES",
    "SUPPORTED_BITS",
    "codebook",
    "max_rounding_error",
    "pack",
    "packed_numel",
    "unpack",
]
