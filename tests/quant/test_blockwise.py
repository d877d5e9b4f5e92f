import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qshampoo.quant import (
    QuantizedTensor,
    codebook,
    decode,
    dequantize,
    dequantize_symmetric,
    encode,
    num_chunks,
    pack,
    quantize,
    triangle,
)
from qshampoo.quant.blockwise import decode_nibbles

CODEBOOKS = [(name, bits) for name in ("linear2", "dynamic_tree") for bits in (3, 4, 8)]


def rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def rounding_bound(name, bits):
    """Largest distance from a point of [-1, 1] to its nearest codebook entry."""
    cb = codebook(name, bits).double()
    half_gap = ((cb[1:] - cb[:-1]) / 2).max().item()
    return max(half_gap, cb[0].item() + 1, 1 - cb[-1].item())


def row_chunks(row_len, bs):
    return [slice(s, min(s + bs, row_len)) for s in range(0, row_len, bs)]


def reference_absmax_full(x2d, bs):
    """Per-element chunk absmax and the list of chunk scales, computed with Python loops."""
    amax = torch.zeros_like(x2d)
    scales = []
    for i in range(x2d.shape[0]):
        for sl in row_chunks(x2d.shape[1], bs):
            a = x2d[i, sl].abs().max()
            amax[i, sl] = a
            scales.append(a)
    return amax, torch.stack(scales) if scales else torch.zeros(0)


def tril_storage_order(n, bs):
    """The "tril" layout's chunks in storage order, each as (row, column slice), written out
    with loops from the documented order (qshampoo/quant/triangle.py): the off-diagonal tiles
    of tile rows 1..k-2, the last tile row, the diagonal tiles' rows, the last diagonal tile."""
    k = max(1, math.ceil(n / bs))
    last = (k - 1) * bs
    chunks = []
    for p in range(1, k - 1):
        for q in range(p):
            for i in range(p * bs, (p + 1) * bs):
                chunks.append((i, slice(q * bs, (q + 1) * bs)))
    for i in range(last, n):
        for q in range(k - 1):
            chunks.append((i, slice(q * bs, (q + 1) * bs)))
    for p in range(k):
        for i in range(p * bs + 1, min((p + 1) * bs, n)):
            chunks.append((i, slice(p * bs, i)))
    return chunks


def reference_absmax_tril(x, bs):
    """Per-element chunk absmax (row-wise chunks of the strict lower triangle) and the chunk
    scales in storage order."""
    amax = torch.zeros_like(x)
    scales = []
    for i, sl in tril_storage_order(x.shape[0], bs):
        a = x[i, sl].abs().max()
        amax[i, sl] = a
        scales.append(a)
    return amax, torch.stack(scales) if scales else torch.zeros(0)


def assert_nearest(y, values, name, bits):
    """values/scale must be the codebook entry nearest to y (up to fp32 rounding)."""
    cb = codebook(name, bits, y.device)
    best = (y.unsqueeze(-1) - cb).abs().min(dim=-1).values
    got = (y - values).abs()
    assert torch.all(got <= best + 1e-6)


def as2d(x):
    return x.reshape(1, -1) if x.dim() <= 1 else x.reshape(x.shape[0], -1)


# --------------------------------------------------------------------------- full layout


@pytest.mark.parametrize("name,bits", CODEBOOKS)
@pytest.mark.parametrize(
    "shape", [(5, 70), (1, 1), (3, 200), (127, 127), (64, 128), (300,), (), (2, 3, 70)]
)
def test_round_trip_error_bound(shape, name, bits):
    x = rand(*shape, seed=len(shape) + bits)
    q = quantize(x, codebook=name, bits=bits)
    y = dequantize(q)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.is_contiguous()
    amax, scales = reference_absmax_full(as2d(x), 64)
    err = (as2d(y) - as2d(x)).abs()
    assert torch.all(err <= rounding_bound(name, bits) * amax + 1e-6 * amax)
    torch.testing.assert_close(q.scales, scales, rtol=0, atol=0)
    # each element decodes to the nearest codebook entry times its chunk's scale
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    assert_nearest(as2d(x) / safe, as2d(y) / safe, name, bits)


@pytest.mark.parametrize("name,bits", CODEBOOKS)
def test_chunk_extremes_reproduced_exactly(name, bits):
    x = rand(7, 150, seed=3)
    y = dequantize(quantize(x, block_size=32, codebook=name, bits=bits))
    for i in range(7):
        for sl in row_chunks(150, 32):
            chunk, out = x[i, sl], y[i, sl]
            top = chunk.argmax()  # largest positive: x/absmax == 1 is in every codebook
            if chunk[top] == chunk.abs().max():
                assert out[top] == chunk[top]
            if name == "linear2":  # -1 is in linear2 only
                j = chunk.abs().argmax()
                assert out[j] == chunk[j]


def test_bound_with_block_size_not_dividing_rows():
    x = rand(9, 37, seed=5) * torch.logspace(-4, 4, 9).unsqueeze(1)  # rows of very different size
    for bs in (1, 5, 36, 37, 38, 1000):
        q = quantize(x, block_size=bs)
        assert q.scales.numel() == 9 * math.ceil(37 / bs)
        amax, _ = reference_absmax_full(x, bs)
        err = (dequantize(q) - x).abs()
        assert torch.all(err <= rounding_bound("linear2", 4) * amax + 1e-6 * amax)


def test_block_size_one_is_lossless_with_linear2():
    # every element is +-absmax of its own chunk, and linear2 contains -1 and 1
    x = rand(4, 9, seed=6)
    assert torch.equal(dequantize(quantize(x, block_size=1)), x)


def test_zero_tensor_and_zero_chunks():
    assert torch.equal(dequantize(quantize(torch.zeros(10, 100))), torch.zeros(10, 100))
    q = quantize(torch.zeros(8, 8), exact_diagonal=True)
    assert torch.equal(dequantize(q), torch.zeros(8, 8))
    x = rand(2, 128, seed=1)
    x[1, :64] = 0
    q = quantize(x)
    assert q.scales[2] == 0
    assert torch.equal(dequantize(q)[1, :64], torch.zeros(64))
    for name, bits in CODEBOOKS:
        codes, _ = encode(x, codebook=name, bits=bits)
        zero_code = int((codebook(name, bits) == 0).nonzero())
        assert torch.all(codes[128:192] == zero_code)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), (0, 0)])
def test_empty(shape):
    q = quantize(torch.zeros(shape))
    assert q.codes.numel() == 0 and q.scales.numel() == 0
    assert dequantize(q).shape == shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_float_dtypes_computed_in_fp32(dtype):
    x = rand(33, 90, seed=2, dtype=dtype)
    q = quantize(x, exact_diagonal=False)
    y = dequantize(q)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.equal(y, dequantize(quantize(x.float())))
    assert q.scales.dtype == torch.float32


def test_input_not_modified():
    x = rand(16, 16, seed=4)
    before = x.clone()
    quantize(x, exact_diagonal=True)
    quantize(x, layout="tril", exact_diagonal=True)
    assert torch.equal(x, before)


# --------------------------------------------------------------------------- exact diagonal


@pytest.mark.parametrize("name,bits", CODEBOOKS)
@pytest.mark.parametrize("n", [1, 5, 64, 127])
def test_exact_diagonal(n, name, bits):
    x = rand(n, n, seed=n)
    x.diagonal().mul_(100)  # a dominant diagonal would ruin the chunk scales if not split off
    q = quantize(x, exact_diagonal=True, codebook=name, bits=bits)
    assert q.diag is not None and q.diag.dtype == torch.float32
    y = dequantize(q)
    assert torch.equal(y.diagonal(), x.diagonal())
    off = x.clone()
    off.diagonal().zero_()
    amax, scales = reference_absmax_full(off, 64)
    torch.testing.assert_close(q.scales, scales, rtol=0, atol=0)
    assert torch.all((y - x).abs() <= rounding_bound(name, bits) * amax + 1e-6 * amax)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("bs", [64, 32])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_nbytes_full_with_diagonal(n, bs, bits):
    q = quantize(rand(n, n), exact_diagonal=True, block_size=bs, bits=bits)
    expected = math.ceil(n * n * bits / 8) + 4 * n * math.ceil(n / bs) + 4 * n
    assert q.nbytes == expected
    q = quantize(rand(n, n), block_size=bs, bits=bits)
    assert q.nbytes == expected - 4 * n


# --------------------------------------------------------------------------- tril layout


@pytest.mark.parametrize("name,bits", CODEBOOKS)
@pytest.mark.parametrize("n", [0, 1, 2, 64, 65, 66, 130])
def test_tril_layout(n, name, bits):
    bs = 64
    # rows whose norms differ by orders of magnitude, as in a Cholesky factor
    x = rand(n, n, seed=n + 1) * torch.logspace(0, -6, max(n, 1))[:n].unsqueeze(1)
    q = quantize(x, layout="tril", codebook=name, bits=bits, block_size=bs)
    y = dequantize(q)
    assert y.shape == (n, n) and y.dtype == torch.float32
    assert torch.equal(y.triu(), torch.zeros(n, n))  # diagonal and above exactly zero
    amax, scales = reference_absmax_tril(x, bs)
    assert q.scales.numel() == sum(math.ceil(i / bs) for i in range(n)) == scales.numel()
    torch.testing.assert_close(q.scales, scales, rtol=0, atol=0)
    err = (y - x.tril(-1)).abs()
    assert torch.all(err <= rounding_bound(name, bits) * amax + 1e-6 * amax)


@pytest.mark.parametrize("n,bs", [(1, 64), (10, 3), (64, 64), (65, 64), (127, 64), (200, 32)])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_tril_nbytes(n, bs, bits):
    n_scales = sum(math.ceil(i / bs) for i in range(n))
    assert num_chunks((n, n), layout="tril", block_size=bs) == n_scales
    codes_bytes = math.ceil(n * (n - 1) // 2 * bits / 8)
    q = quantize(rand(n, n), layout="tril", block_size=bs, bits=bits)
    assert q.diag is None
    assert q.codes.numel() == codes_bytes
    assert q.nbytes == codes_bytes + 4 * n_scales
    qd = quantize(rand(n, n), layout="tril", block_size=bs, bits=bits, exact_diagonal=True)
    assert qd.nbytes == codes_bytes + 4 * n_scales + 4 * n


def test_tril_with_exact_diagonal_is_a_cholesky_factor_format():
    a = rand(50, 50, seed=8)
    c = torch.linalg.cholesky(a @ a.T + 50 * torch.eye(50))
    q = quantize(c, layout="tril", exact_diagonal=True)
    y = dequantize(q)
    assert torch.equal(y.diagonal(), c.diagonal())
    assert torch.equal(y.triu(1), torch.zeros(50, 50))
    amax, _ = reference_absmax_tril(c, 64)
    assert torch.all((y - c).abs() <= rounding_bound("linear2", 4) * amax + 1e-6 * amax)


def test_tril_ignores_upper_triangle():
    x = rand(70, 70, seed=9)
    a = dequantize(quantize(x, layout="tril"))
    b = dequantize(quantize(x.tril(-1), layout="tril"))
    assert torch.equal(a, b)


@pytest.mark.parametrize("n,bs", [(9, 4), (12, 4), (3, 4), (10, 1), (30, 4)])
def test_tril_storage_order(n, bs):
    """Codes and scales are stored chunk by chunk in the documented order, each chunk's
    entries left to right: every chunk is one row segment of the strict lower triangle."""
    x = rand(n, n, seed=10)
    codes, scales = encode(x, layout="tril", block_size=bs, codebook="linear2", bits=8)
    order = tril_storage_order(n, bs)
    assert len(order) == scales.numel() == num_chunks((n, n), layout="tril", block_size=bs)
    assert sum(sl.stop - sl.start for _, sl in order) == codes.numel() == n * (n - 1) // 2
    cb = codebook("linear2", 8)
    expected, pos = torch.zeros(n, n), 0
    for c, (i, sl) in enumerate(order):
        assert scales[c] == x[i, sl].abs().max()
        for j in range(sl.start, sl.stop):
            expected[i, j] = cb[codes[pos].long()] * scales[c]
            pos += 1
    y = decode(codes, scales, (n, n), layout="tril", block_size=bs, codebook="linear2", bits=8)
    assert torch.equal(y, expected)


# --------------------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("name,bits", CODEBOOKS)
@pytest.mark.parametrize("layout,shape", [("full", (37, 101)), ("tril", (100, 100))])
def test_encode_decode_matches_quantize(layout, shape, name, bits):
    x = rand(*shape, seed=11)
    kw = dict(layout=layout, block_size=32, codebook=name, bits=bits)
    codes, scales = encode(x, **kw)
    n = shape[0] * shape[1] if layout == "full" else shape[0] * (shape[0] - 1) // 2
    assert codes.dtype == torch.uint8 and codes.shape == (n,) and int(codes.max()) < 2**bits
    assert scales.dtype == torch.float32
    assert scales.numel() == num_chunks(shape, layout=layout, block_size=32)
    y = decode(codes, scales, shape, **kw)
    q = quantize(x, **kw)
    assert torch.equal(pack(codes, bits), q.codes)
    assert torch.equal(y, dequantize(q))  # dequantize's fused 4-bit path agrees with decode


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_tril_encoded_in_pieces_as_a_whole(monkeypatch, bits):
    """The off-diagonal tiles are coded a few at a time (at most a tile row's count, and
    ``triangle.PIECE_BYTES``): pieces of one tile give the codes and scales of the largest."""
    x = rand(2, 300, 300, seed=12)
    kw = dict(layout="tril", block_size=16, codebook="linear2", bits=bits)
    monkeypatch.setattr(triangle, "PIECE_BYTES", 1 << 40)
    whole = encode(x, **kw)
    monkeypatch.setattr(triangle, "PIECE_BYTES", 1)
    pieces = encode(x, **kw)
    assert torch.equal(whole[0], pieces[0]) and torch.equal(whole[1], pieces[1])


@pytest.mark.parametrize("n,bs", [(70, 32), (9, 4)])
def test_tril_batches_equal_one_matrix_at_a_time(n, bs):
    # a (..., n, n) batch of triangles encodes and decodes as each matrix would alone
    x = rand(2, 3, n, n, seed=5)
    kw = dict(layout="tril", block_size=bs)
    codes, scales = encode(x, **kw)
    assert codes.shape == (2, 3, n * (n - 1) // 2)
    y = decode(codes, scales, (n, n), **kw)
    assert y.shape == (2, 3, n, n)
    for i in range(2):
        for j in range(3):
            c, s = encode(x[i, j], **kw)
            assert torch.equal(codes[i, j], c) and torch.equal(scales[i, j], s)
            assert torch.equal(y[i, j], decode(c, s, (n, n), **kw))


@pytest.mark.parametrize("name", ["linear2", "dynamic_tree"])
@pytest.mark.parametrize(
    "layout,shape,bs", [("tril", (70, 70), 64), ("tril", (9, 9), 4), ("full", (5, 70), 64)]
)
def test_decode_nibbles_equals_decoding_the_unpacked_codes(name, layout, shape, bs):
    # two 4-bit code streams interleaved one pair per byte (CQ+EF's C and E), each decoded
    # from its nibble without unpacking
    kw = dict(layout=layout, block_size=bs, codebook=name)
    batch = (2,) if layout == "tril" else ()  # "full" takes one matrix: flat codes and scales
    (a, sa), (b, sb) = (encode(rand(*batch, *shape, seed=s), bits=4, **kw) for s in (1, 2))
    packed = pack(torch.stack([a, b], -1).flatten(-2), 4)
    for high, (codes, scales) in ((False, (a, sa)), (True, (b, sb))):
        got = decode_nibbles(packed, scales, shape, high=high, **kw)
        assert torch.equal(got, decode(codes, scales, shape, bits=4, **kw))
    with pytest.raises(TypeError, match="packed"):
        decode_nibbles(packed.long(), sa, shape, high=False, **kw)
    with pytest.raises(ValueError, match="scales"):
        decode_nibbles(packed, sa[..., :-1], shape, high=False, **kw)


def test_decode_validates_sizes():
    codes, scales = encode(rand(10, 10), layout="tril")
    with pytest.raises(ValueError, match="batch"):
        decode(codes[None].expand(2, -1), scales, (10, 10), layout="tril")
    with pytest.raises(ValueError, match="codes"):
        decode(codes[:-1], scales, (10, 10), layout="tril")
    with pytest.raises(ValueError, match="scales"):
        decode(codes, scales[:-1], (10, 10), layout="tril")
    with pytest.raises(TypeError, match="codes"):
        decode(codes.long(), scales, (10, 10), layout="tril")


# --------------------------------------------------------------------------- errors


def test_input_errors_name_the_argument():
    with pytest.raises(TypeError, match="floating"):
        quantize(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        quantize([[1.0]])
    with pytest.raises(ValueError, match="block_size"):
        quantize(rand(4, 4), block_size=0)
    with pytest.raises(ValueError, match="block_size"):
        encode(rand(4, 4), block_size=-3)
    with pytest.raises(ValueError, match="layout"):
        quantize(rand(4, 4), layout="triu")
    with pytest.raises(ValueError, match='layout="tril"'):
        quantize(rand(4, 5), layout="tril")
    with pytest.raises(ValueError, match='layout="tril"'):
        quantize(rand(16), layout="tril")
    with pytest.raises(ValueError, match='layout="tril"'):
        quantize(rand(4, 4, 4), layout="tril")
    with pytest.raises(ValueError, match="exact_diagonal"):
        quantize(rand(4, 5), exact_diagonal=True)
    with pytest.raises(ValueError, match="exact_diagonal"):
        quantize(rand(16), exact_diagonal=True)
    with pytest.raises(ValueError, match="codebook"):
        quantize(rand(4, 4), codebook="nf4")
    with pytest.raises(ValueError, match="bits"):
        quantize(rand(4, 4), bits=2)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        dequantize(rand(4, 4))
    q = quantize(rand(4, 4), layout="tril")
    q.shape = (4,)
    with pytest.raises(ValueError, match='layout="tril"'):
        dequantize(q)


def test_quantized_tensor_fields():
    x = rand(20, 30)
    q = quantize(x, block_size=16, codebook="dynamic_tree", bits=3)
    assert isinstance(q, QuantizedTensor)
    assert q.shape == (20, 30) and q.layout == "full" and q.block_size == 16
    assert q.codebook == "dynamic_tree" and q.bits == 3 and q.diag is None
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == math.ceil(600 * 3 / 8)
    assert q.scales.shape == (20 * 2,)


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 150),
    bs=st.integers(1, 70),
    cb=st.sampled_from(CODEBOOKS),
    scale=st.floats(1e-20, 1e20),
    seed=st.integers(0, 2**16),
)
def test_property_full_bound(rows, cols, bs, cb, scale, seed):
    name, bits = cb
    x = rand(rows, cols, seed=seed) * scale
    q = quantize(x, block_size=bs, codebook=name, bits=bits)
    assert q.scales.numel() == rows * math.ceil(cols / bs)
    amax, _ = reference_absmax_full(x, bs)
    err = (dequantize(q) - x).abs()
    assert torch.all(err <= rounding_bound(name, bits) * amax + 1e-6 * amax)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 40), bs=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_property_tril_bound(n, bs, seed):
    x = rand(n, n, seed=seed)
    q = quantize(x, layout="tril", block_size=bs)
    assert q.scales.numel() == sum(math.ceil(i / bs) for i in range(n))
    y = dequantize(q)
    amax, _ = reference_absmax_tril(x, bs)
    assert torch.equal(y.triu(), torch.zeros(n, n))
    assert torch.all((y - x.tril(-1)).abs() <= rounding_bound("linear2", 4) * amax + 1e-6 * amax)


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["full", "tril"])
def test_cuda_matches_cpu(layout):
    x = rand(130, 130, seed=12).cpu()
    q = quantize(x.cuda(), layout=layout, exact_diagonal=True)
    assert q.codes.is_cuda and q.scales.is_cuda and q.diag.is_cuda
    y = dequantize(q)
    assert y.is_cuda
    ref = quantize(x, layout=layout, exact_diagonal=True)
    assert torch.equal(q.codes.cpu(), ref.codes)
    assert torch.equal(y.cpu(), dequantize(ref))


def test_non_contiguous_input():
    x = rand(70, 90, seed=13).T  # (90, 70), not contiguous
    assert torch.equal(dequantize(quantize(x)), dequantize(quantize(x.contiguous())))
    s = rand(70, 70, seed=14).T
    for kw in (dict(layout="tril"), dict(exact_diagonal=True)):
        assert torch.equal(
            dequantize(quantize(s, **kw)), dequantize(quantize(s.contiguous(), **kw))
        )


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("n", [1, 2, 64, 100, 150])
@pytest.mark.parametrize("block_size", [64, 7])
def test_dequantize_symmetric_batched_equals_one_by_one(bits, n, block_size):
    from qshampoo.quant import dequantize_symmetric

    g = torch.Generator(torch.get_default_device()).manual_seed(n)
    mats = [torch.randn(n, n, generator=g) for _ in range(3)]
    kw = dict(layout="tril", exact_diagonal=True, bits=bits, block_size=block_size)
    qs = [quantize(a + a.T, **kw) for a in mats]
    batch = dequantize_symmetric(qs)
    for q, b in zip(qs, batch, strict=True):
        lower = dequantize(q)
        assert torch.equal(b, lower + lower.tril(-1).T)
        assert torch.equal(dequantize_symmetric(q), b)
    with pytest.raises(ValueError, match="one shape"):
        dequantize_symmetric(
            [qs[0], quantize(torch.eye(n + 1), layout="tril", exact_diagonal=True)]
        )


@pytest.mark.parametrize("n", [64, 300])
def test_compiled_symmetric_dequantization_is_identical(n):
    from qshampoo.quant import dequantize_symmetric

    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    qs = []
    for _ in range(2):
        a = torch.randn(n, n, generator=g)
        qs.append(quantize(a + a.T, layout="tril", exact_diagonal=True))
    assert torch.equal(dequantize_symmetric(qs, compiled=True), dequantize_symmetric(qs))


def test_index_tensors_are_of_the_tile_grid_not_of_the_matrix():
    """Coding a triangle of order n above ``MAP_MAX_ORDER`` keeps no index tensor of n^2/2
    entries: only the tile grid's (k^2/2) and one tile's (s^2/2), in a cache of bounded size."""
    from qshampoo.quant import triangle

    triangle._CACHE.clear()
    bs = 16
    start = triangle.MAP_MAX_ORDER + 1
    for n in range(start, start + 3 * triangle._CACHE_SIZE, 3):
        x = rand(n, n, seed=n)
        q = quantize(x + x.T, layout="tril", exact_diagonal=True, block_size=bs)
        dequantize(q)
        assert len(triangle._CACHE) <= triangle._CACHE_SIZE
        biggest = max(
            t.numel()
            for v in triangle._CACHE.values()
            for t in (v if isinstance(v, tuple) else (v,))
        )
        k = math.ceil(n / bs)
        assert biggest <= max(k * k, bs * bs)


@pytest.mark.parametrize("bs", [4, 16, 64])
@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 63, 64, 65, 130, 256])
def test_small_orders_coded_through_maps_as_tile_by_tile(n, bs, monkeypatch):
    """Orders up to ``MAP_MAX_ORDER`` are coded through whole-matrix index maps: the same
    codes, scales and values, bit for bit, as the tile-by-tile path; the maps take about
    14 n^2 bytes (int32)."""
    from qshampoo.quant import triangle

    assert n <= triangle.MAP_MAX_ORDER
    x = rand(3, n, n, seed=n)
    x[1, 2:5] = 0.0  # all-zero chunks: zero scales
    kw = dict(layout="tril", block_size=bs)

    def coded():
        codes, scales = encode(x, **kw)
        lower = decode(codes, scales, (n, n), **kw)
        qs = [quantize(m + m.T, layout="tril", exact_diagonal=True, block_size=bs) for m in x]
        return codes, scales, lower, dequantize_symmetric(qs)

    got = coded()
    maps = [v for key, v in triangle._CACHE.items() if key[0] == "maps" and key[1] == n]
    assert n == 1 or maps
    assert all(sum(t.nbytes for t in m) <= 14 * n * n + 4 * n * bs for m in maps)
    monkeypatch.setattr(triangle, "MAP_MAX_ORDER", 0)
    want = coded()
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize(
    "n,block_size,tile_rows",
    [(130, 64, 1), (128, 32, 1), (300, 32, 3), (97, 8, 2), (40, 4, 1), (257, 64, 2)],
)
def test_row_strips_are_the_rows_of_the_symmetric_matrix(
    monkeypatch, bits, n, block_size, tile_rows
):
    """Each strip is rows of ``dequantize_symmetric``'s matrices, bit for bit; strips are
    whole tile rows (``tile_rows`` of them, from ``STRIP_BYTES``), cover the matrix in order,
    and the last short tile row is merged into the strip before it."""
    from qshampoo.quant import blockwise, dequantize_symmetric, strip_rows, symmetric_row_strips

    monkeypatch.setattr(blockwise, "STRIP_BYTES", 4 * n * block_size * tile_rows)
    g = torch.Generator(torch.get_default_device()).manual_seed(n)
    mats = [torch.randn(n, n, generator=g) for _ in range(3)]
    kw = dict(layout="tril", exact_diagonal=True, bits=bits, block_size=block_size)
    qs = [quantize(a + a.T, **kw) for a in mats]
    whole = dequantize_symmetric(qs)
    tallest = strip_rows(n, block_size)
    ends = [0]
    for r0, r1, rows in symmetric_row_strips(qs):
        assert r0 == ends[-1] and r0 % block_size == 0
        assert tile_rows * block_size <= r1 - r0 <= tallest < (tile_rows + 1) * block_size
        assert torch.equal(rows, whole[:, r0:r1])
        ends.append(r1)
    assert ends[-1] == n and len(ends) > 2


def test_row_strips_only_where_they_hold_less_than_the_matrix():
    from qshampoo.quant import blockwise, strip_rows, symmetric_row_strips

    assert blockwise.STRIP_BYTES == 1 << 20
    assert strip_rows(512, 64) is None  # 1 MiB: one strip
    # 7 tile rows of 513 fit in 1 MiB; the 8th and the one-row 9th make the last strip
    assert strip_rows(513, 64) == 448
    assert strip_rows(2000, 6) is None  # tiles gathered by byte need block sizes of 4k
    q = quantize(torch.eye(300), layout="tril", exact_diagonal=True)
    assert symmetric_row_strips([q]) is None
