"""Block-wise absmax quantization to a low-bit codebook.

A tensor is seen as rows of elements (see ``layout``). Every row is cut into chunks of
``block_size`` consecutive elements, the last chunk of a row possibly shorter; chunks never
cross rows. Each chunk keeps one fp32 absmax scale ``a``; each element ``x`` is stored as the
index of the codebook entry nearest to ``x / a`` (``a = 0`` gives the index of the entry 0.0).
Decoding is ``codebook[index] * a``.

Layouts
    ``"full"``: a tensor with >= 2 dims is viewed as ``(shape[0], prod(shape[1:]))``; a 0-D or
    1-D tensor is a single row.
    ``"tril"``: the strict lower triangle of a square ``n x n`` matrix, row-major in the order of
    ``torch.tril_indices(n, n, -1)``; row ``i`` has ``i`` elements, hence ``ceil(i/block_size)``
    chunks (row 0 has none). Decoding gives zeros on and above the diagonal.

Computation is vectorized: both layouts are handled on a zero-padded grid of shape
``(rows, chunks_per_row, block_size)``; only existing chunks' scales and existing elements' codes
are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .codebooks import codebook as _codebook
from .codebooks import codebook_byte_table, nearest_codes
from .packing import _check_packed, pack, unpack

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


#: index sets kept per cached function (the oldest goes first)
INDEX_CACHE_SIZE = 16


def _index_cache(build):
    """Keep ``build(n, block_size, device)``'s index tensors for the last ``INDEX_CACHE_SIZE``
    argument triples (a model has a handful of orders). A plain dict, not
    ``functools.lru_cache``: ``torch.compile`` reads a dict's entries as graph inputs, where it
    would trace through an lru_cache and rebuild the indices inside the compiled step."""
    cache: dict = {}

    def cached(n: int, block_size: int, device: torch.device):
        key = (n, block_size, device)
        if key not in cache:
            if len(cache) >= INDEX_CACHE_SIZE:
                del cache[next(iter(cache))]
            cache[key] = build(n, block_size, device)
        return cache[key]

    cached.cache = cache  # for tests
    return cached


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


@_index_cache
def _tril_indices(n: int, block_size: int, device: torch.device):
    """Indices into the padded ``(n, k*block_size)`` grid, ``k = ceil(n/block_size)``.

    Returns (element index of each strict-lower entry, in tril order;
             chunk index into the ``(n, k)`` scale grid of each existing chunk, in order).
    """
    k = _ceil_div(n, block_size)
    width = k * block_size
    rows, cols = torch.tril_indices(n, n, -1, device=device)
    elem = rows * width + cols
    # chunk j of row i exists iff j * block_size < i
    i = torch.arange(n, device=device).unsqueeze(1)
    j = torch.arange(k, device=device).unsqueeze(0)
    chunk = (i * k + j)[j * block_size < i]
    return elem, chunk


@_index_cache
def _symmetric_indices(n: int, block_size: int, device: torch.device):
    """Gather indices that rebuild a symmetric ``n x n`` matrix from its "tril" storage.

    Returns (int32 ``(n(n-1)/2,)``: the chunk, in scale order, of each stored element;
             int32 ``(n*n,)``: for each entry ``(i, j)`` row-major, the stored position of
             ``(max(i, j), min(i, j))``, 0 on the diagonal, which is written separately).
    Gathering writes every entry once, where scattering the triangle and adding its
    transpose takes a zero fill, a scatter and a transposed copy (``quant_speed.py``).
    """
    rows, cols = torch.tril_indices(n, n, -1, device=device)
    per_row = (torch.arange(n, device=device) + block_size - 1) // block_size
    first = torch.cumsum(per_row, 0) - per_row  # the first chunk of each row
    elem_chunk = (first[rows] + cols // block_size).to(torch.int32)
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    hi, lo = torch.maximum(i, j), torch.minimum(i, j)
    src = torch.where(i == j, 0, hi * (hi - 1) // 2 + lo)
    return elem_chunk, src.reshape(-1).to(torch.int32)


# --------------------------------------------------------------------------- core


def _normalize_grid(grid: torch.Tensor, *, in_place: bool = False):
    """fp32 grid (rows, k, block_size) -> (grid / chunk absmax, fp32 absmax scales (rows, k)).

    ``in_place`` divides ``grid`` itself (the caller owns it): one fewer full-size temporary.
    """
    # max |x| as max(max x, -min x): two reductions, no |grid| temporary
    scales = torch.maximum(grid.amax(dim=-1), grid.amin(dim=-1).neg_())
    safe = torch.where(scales > 0, scales, torch.ones_like(scales)).unsqueeze(-1)
    return (grid.div_(safe) if in_place else grid / safe), scales


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
        n = _check_square(tuple(x.shape[-2:]), 'layout="tril"')
        batch = x.shape[:-2]
        k = _ceil_div(n, bs)
        lower = x.to(torch.float32).tril(-1)
        if k * bs != n:
            lower = F.pad(lower, (0, k * bs - n))
        grid = lower.view(*batch, n, k, bs)
        normed, scales = _normalize_grid(grid, in_place=True)  # a fresh copy
        elem, chunk = _tril_indices(n, bs, x.device)
        codes = nearest_codes(normed.view(*batch, -1).index_select(-1, elem), codebook, bits)
        return codes, scales.view(*batch, -1).index_select(-1, chunk)

    rows, cols = _full_rows_cols(tuple(x.shape))
    k = _ceil_div(cols, bs)
    flat = x.to(torch.float32).reshape(rows, cols)
    if k * bs != cols:
        flat = F.pad(flat, (0, k * bs - cols))
    normed, scales = _normalize_grid(flat.view(rows, k, bs))
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


def _scale_values(values, scales, shape, layout, bs) -> torch.Tensor:
    """Unscaled fp32 values (one per stored element) times their chunk scales, as ``shape``.

    ``values`` and ``scales`` may carry leading batch dimensions (one matrix each, all of
    ``shape``); the result then has them too.
    """
    device = values.device
    scales = scales.to(device)
    batch = values.shape[:-1]
    if layout == "tril":
        n = shape[0]
        return _tril_values(values, scales, *_tril_indices(n, bs, device), n, bs)

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


def _tril_values(values, scales, elem, chunk, n: int, bs: int) -> torch.Tensor:
    """The ``(..., n, n)`` strictly lower matrices of scaled ``values`` (tril order)."""
    batch = values.shape[:-1]
    k = _ceil_div(n, bs)
    grid = torch.zeros(*batch, n * k * bs, dtype=torch.float32, device=values.device)
    grid.index_copy_(-1, elem, values)
    scale_grid = torch.zeros(*batch, n * k, dtype=torch.float32, device=values.device)
    scale_grid.index_copy_(-1, chunk, scales)
    out = grid.view(*batch, n, k, bs).mul_(scale_grid.view(*batch, n, k, 1)).view(*batch, n, k * bs)
    return out if k * bs == n else out[..., :n].contiguous()


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
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or codes.dim() < 1:
        raise TypeError("codes must be a torch.uint8 tensor of unpacked codes, (..., N)")
    shape = _check_decode_args(codes.shape[-1], scales, shape, layout, block_size)
    if codes.shape[:-1] != scales.shape[:-1]:
        raise ValueError(
            f"codes {tuple(codes.shape)} and scales {tuple(scales.shape)} must have the same "
            "batch dimensions"
        )
    values = _code_values(codes, _codebook(codebook, bits, codes.device))
    return _scale_values(values, scales, shape, layout, block_size)


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


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Reconstruct an fp32 tensor of ``q.shape`` from ``q`` (on ``q.codes``' device)."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    _check_layout(q.layout)
    if q.layout == "tril":
        _check_square(tuple(q.shape), 'layout="tril"')
    n = _num_elements(tuple(q.shape), q.layout)
    shape = _check_decode_args(n, q.scales, q.shape, q.layout, q.block_size)
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
    q: QuantizedTensor | Sequence[QuantizedTensor], *, compiled: bool = False
) -> torch.Tensor:
    """The symmetric matrix whose strict lower triangle (and exact diagonal) ``q`` stores.

    ``q`` must come from ``quantize(x, layout="tril", exact_diagonal=True)``; the result is
    ``T + T^T + diag`` with ``T`` the dequantized strict lower triangle. A sequence of such
    tensors (same shape and format) is dequantized in one batched pass into ``(B, n, n)``.

    ``compiled=True`` runs the 4-bit decoding of orders >= ``COMPILE_MIN_ORDER`` as one
    ``torch.compile``d gather kernel (compiled once per shape). On the development CPU it is
    no faster than the eager gathers (``benchmarks/quant_speed.py``, recorded in
    ``benchmarks/RESULTS.md``); it is there for devices where fusion pays. If compiling fails
    (no C++ compiler, say) it warns once and stays eager. Both give identical results.
    """
    single = isinstance(q, QuantizedTensor)
    qs = [q] if single else list(q)
    first = qs[0]
    fmt = (tuple(first.shape), first.block_size, first.codebook, first.bits)
    for x in qs:
        if x.layout != "tril" or x.diag is None:
            raise ValueError("dequantize_symmetric needs layout='tril' with exact_diagonal=True")
        if (tuple(x.shape), x.block_size, x.codebook, x.bits) != fmt:
            raise ValueError("dequantize_symmetric needs tensors of one shape and format")
    n, bs = first.shape[0], first.block_size
    N = n * (n - 1) // 2
    device = first.codes.device
    scales = torch.stack([x.scales for x in qs])
    diag = torch.stack([x.diag for x in qs])
    codes = torch.stack([x.codes for x in qs])
    index = _symmetric_indices(n, bs, device)
    # inside a compiled optimizer step, the forms a compiler turns into one loop (its code for
    # the eager index_select forms took 2.2x as long at order 1024 on the development CPU,
    # benchmarks/quant_speed.py --traced)
    traced = _is_compiling()
    if n == 1:  # no strict lower triangle: the matrix is its diagonal
        out = diag.view(-1, 1, 1).clone()
    elif first.bits != 4:
        cb = _codebook(first.codebook, first.bits, device)
        values = _code_values(unpack(codes, first.bits, N), cb)
        out = (_gathered_symmetric if traced else _symmetric)(values, scales, diag, *index)
    else:
        # one gather for both nibbles: byte -> (value of low code, value of high code)
        table = codebook_byte_table(first.codebook, device)
        if traced:
            kernel = _gathered_symmetric_4bit
        elif compiled and n >= COMPILE_MIN_ORDER:
            # below COMPILE_MIN_ORDER a compiled call's own overhead eats the gain
            kernel = _compiled_symmetric_4bit() or _symmetric_4bit
        else:
            kernel = _symmetric_4bit
        out = kernel(codes, scales, diag, table, *index)
    return out[0] if single else out


#: whether the code runs inside a ``torch.compile`` trace (a name of its own for the tests)
_is_compiling = torch.compiler.is_compiling


def _symmetric_4bit(codes, scales, diag, table, elem_chunk, src) -> torch.Tensor:
    """``(B, n, n)`` symmetric matrices from packed 4-bit strict-lower codes ``(B, bytes)``:
    the eager kernel, and the fallback of the compiled one (same arguments)."""
    values = _byte_values(codes, table).view(codes.shape[0], -1)
    return _symmetric(values[:, : elem_chunk.numel()], scales, diag, elem_chunk, src)


def _byte_values(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The fp32 values ``(2 * codes.numel(),)`` of packed 4-bit ``codes`` (uint8, any shape),
    low nibble first, from ``codebook_byte_table``'s ``(256, 2)`` ``table``.

    A byte's two values are 8 contiguous bytes of the table, gathered as one int64: about 2x
    faster than gathering rows of the 2-column table (``benchmarks/kernels.py``).
    """
    wide = table.view(torch.int64).view(-1)
    return wide.index_select(0, codes.reshape(-1).to(torch.int32)).view(torch.float32)


#: ``_symmetric`` gathers a batch of roots up to this order in one call: on the development
#: CPU that is faster for several small roots (per-call overhead dominates), and one matrix
#: at a time is faster for a single root or larger ones (``benchmarks/batching.py``)
BATCHED_GATHER_MAX_ORDER = 256


def _symmetric(values, scales, diag, elem_chunk, src) -> torch.Tensor:
    """``(B, n, n)`` symmetric matrices from unscaled strict-lower ``values`` ``(B, N)`` (tril
    order), chunk ``scales`` ``(B, chunks)`` and the exact ``diag`` ``(B, n)``; the index
    tensors come from ``_symmetric_indices``."""
    B, n = diag.shape
    if B > 1 and n <= BATCHED_GATHER_MAX_ORDER:
        out = (values * scales.index_select(-1, elem_chunk)).index_select(-1, src)
    else:
        out = torch.empty(B, n * n, dtype=torch.float32, device=diag.device)
        # one matrix at a time: index_select along the last dim of a batch is slower per entry
        for b in range(B):
            scaled = values[b] * scales[b].index_select(0, elem_chunk)
            torch.index_select(scaled, 0, src, out=out[b])
    out = out.view(B, n, n)
    out.diagonal(dim1=-2, dim2=-1).copy_(diag)
    return out


_COMPILED: dict[str, object] = {}


def _gathered_symmetric_4bit(codes, scales, diag, table, elem_chunk, src) -> torch.Tensor:
    """``_symmetric_4bit`` written as one gather per output entry, for ``torch.compile``.

    Every entry reads its byte, its nibble's value and its chunk's scale through ``src``, so
    the compiler emits one loop over the ``n*n`` outputs (run eagerly, its ``n*n``-long index
    intermediates would make it slower than ``_symmetric_4bit``).
    """
    pos = src.long()
    value = table.view(-1)[codes[:, pos >> 1].long() * 2 + (pos & 1)]
    return _gathered_scaled(value, scales, diag, elem_chunk, pos)


def _gathered_symmetric(values, scales, diag, elem_chunk, src) -> torch.Tensor:
    """``_symmetric`` written as one gather per output entry, for ``torch.compile``."""
    pos = src.long()
    return _gathered_scaled(values[:, pos], scales, diag, elem_chunk, pos)


def _gathered_scaled(value, scales, diag, elem_chunk, pos) -> torch.Tensor:
    """``(B, n, n)`` from ``value`` ``(B, n*n)``, each entry's unscaled value (read at its
    stored position ``pos``): times its chunk's scale, with ``diag`` on the diagonal."""
    B, n = diag.shape
    scale = torch.gather(scales, 1, elem_chunk.long()[pos].expand(B, -1))
    on_diagonal = torch.eye(n, dtype=torch.bool, device=diag.device)
    return torch.where(on_diagonal, torch.diag_embed(diag), (value * scale).view(B, n, n))


def _compiled_symmetric_4bit():
    """The compiled 4-bit kernel, or None once compiling has failed."""
    if "kernel" not in _COMPILED:
        try:
            _COMPILED["kernel"] = _checked(torch.compile(_gathered_symmetric_4bit, dynamic=False))
        except Exception as e:  # torch.compile itself unavailable
            _compile_failed(e)
    return _COMPILED.get("kernel")


#: the smallest order the compiled kernel is used for
COMPILE_MIN_ORDER = 256

#: distinct (batch, order) shapes compiled before dynamo falls back to eager (its default, 8,
#: is fewer than the root shapes of one model)
RECOMPILE_LIMIT = 64


def _checked(kernel):
    def run(*args):
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return kernel(*args)
        except Exception as e:  # e.g. no C++ compiler for inductor: stay eager from now on
            _compile_failed(e)
            return _symmetric_4bit(*args)

    return run


def _compile_failed(e: Exception) -> None:
    import warnings

    _COMPILED["kernel"] = None
    warnings.warn(
        f"qshampoo: torch.compile of the root dequantization failed ({type(e).__name__}: "
        f"{e}); continuing with the eager kernel",
        RuntimeWarning,
        stacklevel=3,
    )
