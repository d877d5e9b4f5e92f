"""Block-wise absmax quantization to a low-bit codebook.

A tensor is seen as rows of elements (see ``layout``). Every row is cut into chunks of
``block_size`` consecutive elements, the last chunk of a row possibly shorter; chunks never
cross rows. Each chunk keeps one fp32 absmax scale ``a``; each element ``x`` is stored as the
index of the codebook entry nearest to ``x / a`` (``a = 0`` gives the index of the entry 0.0).
Decoding is ``codebook[index] * a``.

Layouts
    ``"full"``: a tensor with >= 2 dims is viewed as ``(shape[0], prod(shape[1:]))``; a 0-D or
    1-D tensor is a single row.
    ``"tril"``: the strict lower triangle of a square ``n x n`` matrix; row ``i`` has ``i``
    elements, hence ``ceil(i/block_size)`` chunks (row 0 has none). Entries and chunks are
    stored tile by tile (``qshampoo.quant.triangle``), so that coding and decoding take a fixed
    number of dense tensor operations. Decoding gives zeros on and above the diagonal.

The "full" layout is handled on a zero-padded grid of shape ``(rows, chunks_per_row,
block_size)``; only existing chunks' scales and existing elements' codes are kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import kernels
from .codebooks import codebook as _codebook
from .codebooks import (
    codebook_byte_table,
    codebook_midpoints,
    codebook_nibble_table,
    nearest_codes,
)
from .packing import _check_packed, pack, packed_numel, unpack
from .triangle import TriangleLayout, absmax_normalize_

LAYOUTS: tuple[str, ...] = ("full", "tril")


# --------------------------------------------------------------------------- validation


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (fp32, bf16, fp16, ...), got {x.dtype}")


def _check_square(shape: tuple[int, ...], what: str) -> int:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{what} needs a square 2-D matrix, got shape {tuple(shape)}")
    return shape[0]


# --------------------------------------------------------------------------- geometry


def _full_rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) <= 1:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def num_chunks(shape, *, layout: str = "full", block_size: int = 64) -> int:
    """Number of chunks (and so of fp32 scales) a tensor of ``shape`` is quantized with."""
    _check_layout(layout)
    _check_block_size(block_size)
    shape = tuple(shape)
    if layout == "tril":
        n = _check_square(shape, 'layout="tril"')
        # sum over rows i = 1..n-1 of ceil(i / block_size), in closed form
        q, r = divmod(max(n - 1, 0), block_size)
        return block_size * q * (q + 1) // 2 + r * (q + 1)
    rows, cols = _full_rows_cols(shape)
    return rows * _ceil_div(cols, block_size)


def _num_elements(shape: tuple[int, ...], layout: str) -> int:
    if layout == "tril":
        n = shape[0]
        return n * (n - 1) // 2
    return math.prod(shape)


# --------------------------------------------------------------------------- core


def encode(
    x: torch.Tensor,
    *,
    layout: str = "full",
    block_size: int = 64,
    codebook: str = "linear2",
    bits: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to unpacked codes and per-chunk scales.

    Returns ``(codes, scales)``: ``codes`` a 1-D uint8 tensor with one code per stored element
    (``x.numel()`` for "full", ``n(n-1)/2`` for "tril"), ``scales`` a 1-D fp32 tensor with one
    absmax per chunk, in row order. Both live on ``x``'s device. With "tril", ``x`` may be a
    batch ``(..., n, n)`` of matrices; codes and scales then have its leading dimensions.
    """
    _check_input(x)
    _check_layout(layout)
    _check_block_size(block_size)
    _codebook(codebook, bits)  # validates name and bits
    bs = block_size
    if layout == "tril":
        _check_square(tuple(x.shape[-2:]), 'layout="tril"')
    if kernels.enabled(x):  # None if the kernel failed
        mids = codebook_midpoints(codebook, bits, x.device)
        out = kernels.encode(x, layout=layout, block_size=bs, midpoints=mids, bits=bits)
        if out is not None:
            return out
    if layout == "tril":
        n = x.shape[-1]
        batch = x.shape[:-2]
        X = x.to(torch.float32).reshape(math.prod(batch), n, n)
        codes, scales = TriangleLayout(n, bs).encode(X, codebook, bits)
        return codes.view(*batch, -1), scales.view(*batch, -1)

    rows, cols = _full_rows_cols(tuple(x.shape))
    k = _ceil_div(cols, bs)
    flat = x.to(torch.float32).reshape(rows, cols)
    # a fresh fp32 copy, normalized in place
    flat = F.pad(flat, (0, k * bs - cols)) if k * bs != cols else flat.clone()
    normed = flat.view(rows, k, bs)
    scales = absmax_normalize_(normed)
    normed = normed.view(rows, k * bs)
    if k * bs != cols:
        normed = normed[:, :cols].contiguous()
    return nearest_codes(normed, codebook, bits).reshape(-1), scales.reshape(-1)


def _check_decode_args(codes_numel, scales, shape, layout, block_size) -> tuple[int, ...]:
    _check_layout(layout)
    _check_block_size(block_size)
    shape = tuple(int(s) for s in shape)
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32 or scales.dim() < 1:
        raise TypeError("scales must be a torch.float32 tensor with at least 1 dimension")
    if layout == "tril":
        _check_square(shape, 'layout="tril"')
    n_elem = _num_elements(shape, layout)
    if codes_numel != n_elem:
        raise ValueError(
            f"codes has {codes_numel} entries, shape {shape} ({layout}) needs {n_elem}"
        )
    n_chunks = num_chunks(shape, layout=layout, block_size=block_size)
    if scales.shape[-1] != n_chunks:
        raise ValueError(
            f"scales has {scales.shape[-1]} entries, shape {shape} ({layout}, "
            f"block_size={block_size}) needs {n_chunks}"
        )
    return shape


def _check_codes(name, what, codes, scales, shape, layout, block_size) -> tuple[int, ...]:
    """``decode``'s checks of its ``codes`` argument (called ``name``, holding ``what``) and
    ``scales``; returns the shape."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.dim() < 1:
        raise TypeError(f"{name} must be a torch.uint8 tensor of {what}, (..., N)")
    shape = _check_decode_args(codes.shape[-1], scales, shape, layout, block_size)
    if codes.shape[:-1] != scales.shape[:-1]:
        raise ValueError(
            f"{name} {tuple(codes.shape)} and scales {tuple(scales.shape)} must have the same "
            "batch dimensions"
        )
    return shape


def _scale_values(values, scales, shape, layout, bs) -> torch.Tensor:
    """Unscaled fp32 values (one per stored element) times their chunk scales, as ``shape``.

    ``values`` and ``scales`` may carry leading batch dimensions (one matrix each, all of
    ``shape``); the result then has them too.
    """
    device = values.device
    scales = scales.to(device)
    batch = values.shape[:-1]
    if layout == "tril":
        flat = values.reshape(math.prod(batch), values.shape[-1])
        return _decode_tril(lambda lo, hi: flat[:, lo:hi], scales, shape[0], bs, batch)

    rows, cols = _full_rows_cols(shape)
    k = _ceil_div(cols, bs)
    values = values.view(*batch, rows, cols)
    if k * bs != cols:
        values = F.pad(values, (0, k * bs - cols))
    out = (values.view(*batch, rows, k, bs) * scales.view(*batch, rows, k, 1)).view(
        *batch, rows, k * bs
    )
    if k * bs != cols:
        out = out[..., :cols].contiguous()
    return out.reshape((*batch, *shape))


def _decode_tril(values_of, scales, n, bs, batch) -> torch.Tensor:
    """The strictly lower ``(*batch, n, n)`` fp32 matrices stored as ``values_of``'s entries
    (``TriangleLayout.decode_into``) and chunk ``scales`` ``(*batch, chunks)``."""
    B = math.prod(batch)
    out = torch.zeros(B, n, n, dtype=torch.float32, device=scales.device)
    TriangleLayout(n, bs).decode_into(values_of, scales.reshape(B, -1), out, symmetric=False)
    return out.view(*batch, n, n)


def decode(
    codes: torch.Tensor,
    scales: torch.Tensor,
    shape,
    *,
    layout: str = "full",
    block_size: int = 64,
    codebook: str = "linear2",
    bits: int = 4,
) -> torch.Tensor:
    """Inverse of ``encode``: an fp32 tensor of ``shape`` on ``codes``' device.

    For "tril" the result is the ``n x n`` matrix with zeros on and above the diagonal.
    ``codes`` ``(..., N)`` and ``scales`` ``(..., chunks)`` may share leading batch dimensions
    (what ``encode`` returns for a batch); the result is then ``(..., *shape)``.
    """
    shape = _check_codes("codes", "unpacked codes", codes, scales, shape, layout, block_size)
    return _decode_bytes(
        codes, scales, shape, layout, block_size, _codebook(codebook, bits, codes.device)
    )


def decode_nibbles(
    packed: torch.Tensor,
    scales: torch.Tensor,
    shape,
    *,
    high: bool,
    layout: str = "full",
    block_size: int = 64,
    codebook: str = "linear2",
) -> torch.Tensor:
    """``decode`` of the low (``high=False``) or the high 4-bit code of each byte of
    ``packed`` ``(..., N)``: two interleaved 4-bit code streams, one pair per byte (what
    ``pack`` makes of ``[a0, b0, a1, b1, ...]``: ``a`` low, ``b`` high), decoded without
    unpacking them first. Each byte is looked up in a 256-entry table of its nibble's value.
    """
    shape = _check_codes("packed", "code pairs", packed, scales, shape, layout, block_size)
    table = codebook_nibble_table(codebook, high, packed.device)
    return _decode_bytes(packed, scales, shape, layout, block_size, table)


def _decode_bytes(codes, scales, shape, layout, block_size, table) -> torch.Tensor:
    """``decode`` of one byte per stored element, each the index of its value in ``table``."""
    if kernels.enabled(codes):  # a stream of 8-bit codes
        out = kernels.decode(
            codes, scales, shape, layout=layout, block_size=block_size, codebook=table, bits=8
        )
        if out is not None:
            return out
    if layout == "tril":  # decoded a piece at a time
        flat = codes.reshape(math.prod(codes.shape[:-1]), codes.shape[-1])
        scales = scales.to(codes.device)
        values_of = lambda lo, hi: _code_values(flat[:, lo:hi], table)  # noqa: E731
        return _decode_tril(values_of, scales, shape[0], block_size, codes.shape[:-1])
    return _scale_values(_code_values(codes, table), scales, shape, layout, block_size)


def _code_values(codes: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """The codebook ``cb``'s values of unpacked ``codes`` (uint8, any shape), fp32."""
    return cb.index_select(0, codes.reshape(-1).to(torch.int32)).view(codes.shape)


# --------------------------------------------------------------------------- high level


@dataclass
class QuantizedTensor:
    """A block-wise quantized tensor.

    ``codes``: packed uint8 codes (``ceil(N*bits/8)`` bytes, N = stored elements);
    ``scales``: fp32, one per chunk; ``diag``: the exact fp32 diagonal or None;
    ``shape``: the original shape; ``layout``, ``block_size``, ``codebook``, ``bits``: the format.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    diag: torch.Tensor | None
    shape: tuple[int, ...]
    layout: str = "full"
    block_size: int = 64
    codebook: str = "linear2"
    bits: int = 4

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors: codes + scales (+ diagonal)."""
        total = self.codes.nbytes + self.scales.nbytes
        if self.diag is not None:
            total += self.diag.nbytes
        return total


def quantize(
    x: torch.Tensor,
    *,
    block_size: int = 64,
    codebook: str = "linear2",
    bits: int = 4,
    exact_diagonal: bool = False,
    layout: str = "full",
) -> QuantizedTensor:
    """Quantize ``x`` block-wise (computation in fp32 whatever ``x``'s dtype).

    ``exact_diagonal=True`` stores the diagonal of a square matrix in fp32, exactly, and zeroes
    it before the chunk scales are computed. With ``layout="tril"`` the diagonal is not part of
    the quantized strict lower triangle anyway; ``exact_diagonal`` then stores it as well (the
    format of a Cholesky factor: strict lower triangle quantized, diagonal exact).
    """
    _check_input(x)
    _check_layout(layout)
    _check_block_size(block_size)
    _codebook(codebook, bits)
    shape = tuple(x.shape)
    diag = None
    if layout == "tril":
        _check_square(shape, 'layout="tril"')
        if exact_diagonal:
            diag = x.diagonal().to(torch.float32, copy=True)
    elif exact_diagonal:
        _check_square(shape, "exact_diagonal=True")
        x = x.to(torch.float32, copy=True)
        diag = x.diagonal().clone()
        x.diagonal().zero_()
    codes, scales = encode(x, layout=layout, block_size=block_size, codebook=codebook, bits=bits)
    return QuantizedTensor(
        codes=pack(codes, bits),
        scales=scales,
        diag=diag,
        shape=shape,
        layout=layout,
        block_size=block_size,
        codebook=codebook,
        bits=bits,
    )


def zero_code(codebook: str, bits: int) -> int:
    """The index of the codebook entry 0.0 (every codebook has one): the code of a zero."""
    return int((_codebook(codebook, bits) == 0).nonzero()[0])


def zero_codes(count: int, codebook: str, bits: int, device=None) -> torch.Tensor:
    """``count`` codes of zero, packed: what quantizing zeros stores, without quantizing."""
    code = torch.full((count,), zero_code(codebook, bits), dtype=torch.uint8, device=device)
    return pack(code, bits)


def quantized_zeros(
    shape,
    diag: torch.Tensor | None = None,
    *,
    layout: str = "full",
    block_size: int = 64,
    codebook: str = "linear2",
    bits: int = 4,
    device=None,
) -> QuantizedTensor:
    """``quantize`` of a zero tensor of ``shape`` (with ``diag`` as its exact diagonal, if
    given), built directly: zero codes and zero scales, no temporary of the tensor's size."""
    shape = tuple(shape)
    n = _num_elements(shape, layout)
    scales = torch.zeros(num_chunks(shape, layout=layout, block_size=block_size), device=device)
    return QuantizedTensor(
        codes=zero_codes(n, codebook, bits, device),
        scales=scales,
        diag=diag,
        shape=shape,
        layout=layout,
        block_size=block_size,
        codebook=codebook,
        bits=bits,
    )


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Reconstruct an fp32 tensor of ``q.shape`` from ``q`` (on ``q.codes``' device)."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    _check_layout(q.layout)
    if q.layout == "tril":
        _check_square(tuple(q.shape), 'layout="tril"')
    n = _num_elements(tuple(q.shape), q.layout)
    shape = _check_decode_args(n, q.scales, q.shape, q.layout, q.block_size)
    if kernels.enabled(q.codes):
        _check_packed(q.codes, n, q.bits)
        out = kernels.decode(
            q.codes,
            q.scales,
            shape,
            layout=q.layout,
            block_size=q.block_size,
            codebook=_codebook(q.codebook, q.bits, q.codes.device),
            bits=q.bits,
            diag=q.diag,
        )
        if out is not None:
            return out
    if q.bits == 4:
        # one gather for both nibbles: byte -> (value of low code, value of high code)
        _check_packed(q.codes, n, 4)
        values = _byte_values(q.codes, codebook_byte_table(q.codebook, q.codes.device))[:n]
    else:
        values = _code_values(
            unpack(q.codes, q.bits, n), _codebook(q.codebook, q.bits, q.codes.device)
        )
    out = _scale_values(values, q.scales, shape, q.layout, q.block_size)
    if q.diag is not None:
        out.diagonal().copy_(q.diag)
    return out


def dequantize_symmetric(
    q: QuantizedTensor | Sequence[QuantizedTensor],
    *,
    compiled: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The symmetric matrix whose strict lower triangle (and exact diagonal) ``q`` stores.

    ``q`` must come from ``quantize(x, layout="tril", exact_diagonal=True)``; the result is
    ``T + T^T + diag`` with ``T`` the dequantized strict lower triangle. A sequence of such
    tensors (same shape and format) is dequantized in one batched pass into ``(B, n, n)``,
    written into ``out`` when given (a buffer of that shape to reuse).

    ``compiled=True`` runs the decoding of orders >= ``COMPILE_MIN_ORDER`` as one
    ``torch.compile``d function (compiled once per shape); if compiling fails (no C++ compiler,
    say) it warns once and stays eager. Both give identical results.
    """
    single = isinstance(q, QuantizedTensor)
    qs = [q] if single else list(q)
    first = qs[0]
    n = first.shape[0]
    codes, scales, diag = _symmetric_parts(qs, "dequantize_symmetric")
    if out is None:
        out = torch.empty(len(qs), n, n, dtype=torch.float32, device=codes.device)
    kernel = symmetric_from_codes
    # the Triton kernel, where it runs (in symmetric_from_codes), comes before compiled torch code
    compile_it = compiled and n >= COMPILE_MIN_ORDER and not kernels.enabled(codes)
    if compile_it and not torch.compiler.is_compiling():
        kernel = _compiled_kernel() or symmetric_from_codes
    kernel(codes, scales, diag, out, first.block_size, first.codebook, first.bits)
    return out[0] if single else out


def _symmetric_parts(qs: list[QuantizedTensor], what: str) -> tuple[torch.Tensor, ...]:
    """The stacked codes, scales and diagonals of roots of one shape and format."""
    first = qs[0]
    fmt = (tuple(first.shape), first.block_size, first.codebook, first.bits)
    for x in qs:
        if x.layout != "tril" or x.diag is None:
            raise ValueError(f"{what} needs layout='tril' with exact_diagonal=True")
        if (tuple(x.shape), x.block_size, x.codebook, x.bits) != fmt:
            raise ValueError(f"{what} needs tensors of one shape and format")
    return tuple(_stack([getattr(x, a) for x in qs]) for a in ("codes", "scales", "diag"))


#: a symmetric matrix of more than this many fp32 bytes is decoded a strip of rows at a time
#: to be multiplied (``symmetric_row_strips``), each strip at most this many bytes (or one tile
#: row): what preconditioning holds of each root at once, instead of the whole root
STRIP_BYTES = 1 << 20


def strip_rows(n: int, block_size: int) -> int | None:
    """Rows of the tallest strip ``symmetric_row_strips`` decodes an order-``n`` matrix in, or
    None where it decodes it whole: when it fits in one strip, and when ``block_size`` is not a
    multiple of 4 (tiles are gathered by byte: a tile's codes are then whole bytes at any
    width)."""
    if block_size % 4:
        return None
    strips = TriangleLayout(n, block_size).row_strips(STRIP_BYTES // (4 * n))
    if len(strips) == 1:
        return None
    return max(min(p1 * block_size, n) - p0 * block_size for p0, p1 in strips)


def symmetric_row_strips(
    q: Sequence[QuantizedTensor],
) -> Iterator[tuple[int, int, torch.Tensor]] | None:
    """The symmetric matrices of ``dequantize_symmetric(q)`` a strip of rows at a time:
    ``(r0, r1, rows r0 .. r1-1 (B, r1 - r0, n))``, each strip written into one buffer that the
    next overwrites (use it before asking for the next). Strips are whole tile rows
    (``strip_rows``). None where the matrices are to be decoded whole: see ``strip_rows``, and
    where the Triton kernel decodes them (it writes whole matrices)."""
    qs = list(q)
    first = qs[0]
    n, bs, cb, bits = first.shape[0], first.block_size, first.codebook, first.bits
    rows = strip_rows(n, bs)
    if rows is None or kernels.enabled(first.codes):
        return None
    codes, scales, diag = _symmetric_parts(qs, "symmetric_row_strips")
    tri = TriangleLayout(n, bs)
    B = codes.shape[0]
    buffer = torch.empty(B * rows * n, dtype=torch.float32, device=codes.device)
    values_of = packed_values_of(codes, cb, bits)
    runs_of = packed_runs_of(codes, cb, bits)

    def strips() -> Iterator[tuple[int, int, torch.Tensor]]:
        for p0, p1 in tri.row_strips(STRIP_BYTES // (4 * n)):
            r0, r1 = p0 * bs, min(p1 * bs, n)
            out = buffer[: B * (r1 - r0) * n].view(B, r1 - r0, n)
            tri.decode_rows(values_of, runs_of, scales, diag, out, p0, p1)
            yield r0, r1, out

    return strips()


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def symmetric_from_codes(
    codes: torch.Tensor,
    scales: torch.Tensor,
    diag: torch.Tensor,
    out: torch.Tensor,
    block_size: int,
    codebook: str,
    bits: int,
) -> None:
    """Write ``(B, n, n)`` symmetric matrices into ``out`` from packed "tril" ``codes``
    ``(B, bytes)``, chunk ``scales`` ``(B, chunks)`` and the exact ``diag`` ``(B, n)``."""
    n = diag.shape[-1]
    if kernels.enabled(codes):
        cb = _codebook(codebook, bits, codes.device)
        done = kernels.decode(
            codes,
            scales,
            (n, n),
            layout="tril",
            block_size=block_size,
            codebook=cb,
            bits=bits,
            diag=diag,
            symmetric=True,
            out=out,
        )
        if done is not None:
            return
    tri = TriangleLayout(n, block_size)
    tri.decode_into(packed_values_of(codes, codebook, bits), scales, out, symmetric=True)
    out.diagonal(dim1=-2, dim2=-1).copy_(diag)


def packed_values_of(codes: torch.Tensor, codebook: str, bits: int):
    """``values_of(lo, hi)`` for ``TriangleLayout.decode_into``: the unscaled fp32 values
    ``(B, hi - lo)`` of codes ``lo .. hi - 1`` of each row of packed ``codes`` ``(B, bytes)``,
    decoded from the bytes that hold them alone."""
    group = 8 // math.gcd(8, bits)  # codes per run of whole bytes

    def values_of(lo: int, hi: int) -> torch.Tensor:
        start = lo - lo % group  # the first code of a byte
        part = codes[:, start * bits // 8 : packed_numel(hi, bits)]
        return code_values(part, hi - start, codebook, bits)[:, lo - start : hi - start]

    return values_of


def packed_runs_of(codes: torch.Tensor, codebook: str, bits: int):
    """``runs_of(index, width)`` for ``TriangleLayout.decode_rows``: the unscaled fp32 values
    ``(B, len(index) * width)`` of the runs of codes ``i * width .. (i+1) * width - 1``, ``i``
    in ``index``, of packed ``codes`` ``(B, bytes)``; ``width * bits`` a multiple of 8, so that
    each run is whole bytes, gathered by one ``index_select``."""

    def runs_of(index: torch.Tensor, width: int) -> torch.Tensor:
        run = width * bits // 8
        B = codes.shape[0]
        part = codes[:, : codes.shape[1] // run * run].view(B, -1, run).index_select(1, index)
        return code_values(part.view(B, -1), index.numel() * width, codebook, bits)

    return runs_of


def code_values(codes: torch.Tensor, n: int, codebook: str, bits: int) -> torch.Tensor:
    """The unscaled fp32 codebook values ``(B, >= n)`` of packed ``codes`` ``(B, bytes)``: at 4
    bits one gather for both nibbles of a byte, else unpacking then a gather."""
    if bits == 4:
        return _byte_values(codes, codebook_byte_table(codebook, codes.device)).view(
            codes.shape[0], -1
        )
    return _code_values(unpack(codes, bits, n), _codebook(codebook, bits, codes.device))


def _byte_values(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The fp32 values ``(2 * codes.numel(),)`` of packed 4-bit ``codes`` (uint8, any shape),
    low nibble first, from ``codebook_byte_table``'s ``(256, 2)`` ``table``.

    A byte's two values are 8 contiguous bytes of the table, gathered as one int64: about 2x
    faster than gathering rows of the 2-column table (``benchmarks/kernels.py``).
    """
    wide = table.view(torch.int64).view(-1)
    return wide.index_select(0, codes.reshape(-1).to(torch.int32)).view(torch.float32)


#: the smallest order ``compiled=True`` compiles the decoding for (below it, a compiled call's
#: own overhead eats the gain)
COMPILE_MIN_ORDER = 256

#: distinct shapes compiled before dynamo falls back to eager (its default, 8, is fewer than
#: the root shapes of one model)
RECOMPILE_LIMIT = 64

_COMPILED: dict[str, object] = {}


def _compiled_kernel():
    """``symmetric_from_codes`` compiled, or None once compiling has failed."""
    if "kernel" not in _COMPILED:
        try:
            compiled = torch.compile(symmetric_from_codes, dynamic=False)
        except Exception as e:  # torch.compile itself unavailable
            _compile_failed(e)
        else:

            def run(*args):
                try:
                    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                        return compiled(*args)
                except Exception as e:  # e.g. no C++ compiler for inductor: stay eager
                    _compile_failed(e)
                    return symmetric_from_codes(*args)

            _COMPILED["kernel"] = run
    return _COMPILED.get("kernel")


def _compile_failed(e: Exception) -> None:
    import warnings

    _COMPILED["kernel"] = None
    warnings.warn(
        f"qshampoo: torch.compile of the root dequantization failed ({type(e).__name__}: "
        f"{e}); continuing with the eager kernel",
        RuntimeWarning,
        stacklevel=3,
    )
