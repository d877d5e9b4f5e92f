"""Block-wise low-bit quantization: codebooks, bit packing, quantize / dequantize."""

from .blockwise import (
    LAYOUTS,
    QuantizedTensor,
    decode,
    dequantize,
    dequantize_symmetric,
    encode,
    num_chunks,
    quantize,
    quantized_zeros,
    strip_rows,
    symmetric_row_strips,
    zero_codes,
)
from .codebooks import CODEBOOK_NAMES, SUPPORTED_BITS, codebook, max_rounding_error
from .packing import pack, packed_numel, unpack

__all__ = [
    "CODEBOOK_NAMES",
    "LAYOUTS",
    "SUPPORTED_BITS",
    "QuantizedTensor",
    "codebook",
    "decode",
    "dequantize",
    "dequantize_symmetric",
    "encode",
    "max_rounding_error",
    "num_chunks",
    "pack",
    "packed_numel",
    "quantize",
    "quantized_zeros",
    "strip_rows",
    "symmetric_row_strips",
    "unpack",
    "zero_codes",
]
