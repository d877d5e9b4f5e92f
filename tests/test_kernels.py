"""The Triton kernels (qshampoo/kernels/) against the torch operators they replace.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, numpy), which
tests/conftest.py sets before anything imports triton; with CUDA they are compiled and run on
the GPU. Either way
every code, scale and decoded value must equal the torch path's exactly: both compute one
IEEE fp32 division per element (the kernel with ``div_rn``), the same comparisons against the
same fp32 midpoints, and one fp32 product per decoded value. Skipped where triton is not
installed (``pip install qshampoo[triton]``; ``make test-oldest`` has none).
"""

from __future__ import annotations

import os

import pytest
import torch

import qshampoo
from qshampoo import kernels
from qshampoo.quant import (
    decode,
    dequantize,
    dequantize_symmetric,
    encode,
    pack,
    quantize,
    unpack,
)
from qshampoo.quant.blockwise import decode_nibbles
from qshampoo.quant.codebooks import codebook, codebook_midpoints

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
#: a kernel that fails warns and hands over to the torch path: here that is a failure
pytestmark = pytest.mark.filterwarnings("error:qshampoo. a Triton kernel failed")
needs_triton = pytest.mark.skipif(not kernels.available(), reason="triton is not installed")
if not CUDA:
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py sets it"

#: the codebooks and widths the factors use (3 bits: the generic unpacking, one shape)
FORMATS = [(name, bits) for name in ("linear2", "dynamic_tree") for bits in (4, 8)]
#: (order, block size): below one block, t = 1 (a one-row last tile), several tile rows, the
#: default block size with a short last tile
TRIL = [(1, 4), (7, 4), (13, 4), (21, 8), (70, 64)]


def rand(*shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(DEVICE)


def torch_path(fn, *args, **kwargs):
    with kernels.using("off"):
        return fn(*args, **kwargs)


def kernel_path(fn, *args, **kwargs):
    with kernels.using("on"):
        return fn(*args, **kwargs)


@pytest.fixture
def calls(monkeypatch):
    """Counts of the kernels' launches through qshampoo.quant (proof that the kernel path ran)."""
    count = {"decode": 0, "encode": 0}
    for name in count:
        run = getattr(kernels, name)

        def counted(*args, _run=run, _name=name, **kwargs):
            count[_name] += 1
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernels, name, counted)
    return count


# --------------------------------------------------------------------------- the switch


def test_modes_and_switch(monkeypatch):
    cpu = torch.zeros(1)
    with kernels.using("off"):
        assert not kernels.enabled(cpu)
    with kernels.using("auto"):
        assert not kernels.enabled(cpu)  # never on the CPU in normal use
        assert kernels.mode() == "auto"
    with kernels.using("on"):
        assert kernels.enabled(cpu) == kernels.available()
    with pytest.raises(ValueError, match="QSHAMPOO_TRITON"):
        kernels.set_mode("yes")
    # the environment variable is read while no mode has been set; unset, the kernels are off
    previous = kernels.set_mode("auto")
    monkeypatch.setitem(kernels._state, "mode", None)
    monkeypatch.delenv(kernels.ENV, raising=False)
    assert kernels.mode() == "off"
    monkeypatch.setenv(kernels.ENV, "auto")
    monkeypatch.setitem(kernels._state, "mode", None)
    assert kernels.mode() == "auto"
    monkeypatch.setitem(kernels._state, "mode", None)
    monkeypatch.setenv(kernels.ENV, "off")
    assert kernels.mode() == "off"
    kernels.set_mode(previous)


@needs_triton
def test_a_failing_kernel_hands_over_to_torch(monkeypatch):
    from qshampoo.kernels import decoder

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(decoder, "decode", broken)
    q = torch_path(quantize, rand(9, 9, seed=0), layout="tril", exact_diagonal=True, block_size=4)
    with kernels.using("on"):
        with pytest.warns(RuntimeWarning, match="no kernel for this GPU"):
            got = dequantize_symmetric(q)
        assert kernels.mode() == "off"
    assert torch.equal(got, torch_path(dequantize_symmetric, q))


# --------------------------------------------------------------------------- "tril" layout


@needs_triton
@pytest.mark.parametrize("name,bits", FORMATS)
@pytest.mark.parametrize("n,bs", TRIL)
def test_tril_encode_and_decode(n, bs, name, bits, calls):
    x = rand(2, n, n, seed=n + bits)
    x[1, n // 2].zero_()  # a row of zero chunks: scale 0, codes of zero
    kw = dict(layout="tril", block_size=bs, codebook=name, bits=bits)
    codes, scales = torch_path(encode, x, **kw)
    k_codes, k_scales = kernel_path(encode, x, **kw)
    assert torch.equal(k_codes, codes) and torch.equal(k_scales, scales)
    # unpacked codes (decode), then packed with the exact diagonal (dequantize) and symmetric
    # (dequantize_symmetric: the roots)
    assert torch.equal(kernel_path(decode, codes, scales, (n, n), **kw), torch_path(
        decode, codes, scales, (n, n), **kw))  # fmt: skip
    q = torch_path(quantize, x[0], exact_diagonal=True, **kw)
    assert torch.equal(kernel_path(dequantize, q), torch_path(dequantize, q))
    got = kernel_path(dequantize_symmetric, [q, q])
    assert torch.equal(got, torch_path(dequantize_symmetric, [q, q]))
    assert torch.equal(got[0], got[0].mT)
    assert calls == {"encode": 1, "decode": 3}


@needs_triton
@pytest.mark.parametrize("name,bits", FORMATS)
def test_tril_decode_of_interleaved_codes(name, bits):
    """CQ+EF keeps C's and E's codes as one pair per entry and decodes each from a strided
    view of the unpacked pairs (factors/cholesky.py), at 4 bits straight from its nibble of
    the packed bytes (``decode_nibbles``); the 3-bit stream straddles bytes."""
    n, bs = 21, 8
    kw = dict(layout="tril", block_size=bs, codebook=name, bits=bits)
    x = rand(2, 2, n, n, seed=1)
    (c, sc), (e, se) = (torch_path(encode, x[i], **kw) for i in range(2))
    packed = pack(torch.stack([c, e], -1).flatten(-2), bits)
    pairs = unpack(packed, bits, 2 * c.shape[-1])
    for which, scales in ((0, sc), (1, se)):
        view = pairs.view(2, -1, 2)[..., which]
        expected = torch_path(decode, view, scales, (n, n), **kw)
        assert torch.equal(kernel_path(decode, view, scales, (n, n), **kw), expected)
        if bits == 4:
            kw4 = dict(layout="tril", block_size=bs, codebook=name, high=bool(which))
            for path in (torch_path, kernel_path):
                assert torch.equal(path(decode_nibbles, packed, scales, (n, n), **kw4), expected)


@needs_triton
@pytest.mark.parametrize("name", ["linear2", "dynamic_tree"])
def test_three_bit_stream(name):
    n, bs = 21, 8
    q = torch_path(quantize, rand(n, n, seed=3), layout="tril", block_size=bs, codebook=name,
                   bits=3, exact_diagonal=True)  # fmt: skip
    assert torch.equal(kernel_path(dequantize_symmetric, q), torch_path(dequantize_symmetric, q))
    c, s = kernel_path(encode, rand(n, n, seed=3), layout="tril", block_size=bs, codebook=name,
                       bits=3)  # fmt: skip
    assert torch.equal(pack(c, 3), q.codes) and torch.equal(s, q.scales)


@needs_triton
@pytest.mark.parametrize("name,bits", [("linear2", 4), ("dynamic_tree", 8)])
def test_encode_in_row_groups(name, bits, monkeypatch):
    """Large blocks are quantized a few rows of chunks per program (``ELEMENTS``): made small
    here, a tile of the "tril" layout takes four programs and a "full" row one per chunk."""
    from qshampoo.kernels import encoder

    monkeypatch.setattr(encoder, "ELEMENTS", 16)
    for x, kw in (
        (rand(2, 21, 21, seed=5), dict(layout="tril", block_size=8)),
        (rand(5, 70, seed=6), dict(layout="full", block_size=32)),
    ):
        kw.update(codebook=name, bits=bits)
        got, ref = kernel_path(encode, x, **kw), torch_path(encode, x, **kw)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


# --------------------------------------------------------------------------- "full" layout


@needs_triton
@pytest.mark.parametrize("name,bits", FORMATS)
@pytest.mark.parametrize("shape,bs", [((9, 9), 4), ((5, 70), 64), ((3, 2, 11), 8), ((37,), 16)])
def test_full_encode_and_decode(shape, bs, name, bits, calls):
    x = rand(*shape, seed=bits)
    kw = dict(block_size=bs, codebook=name, bits=bits)
    diagonal = len(shape) == 2 and shape[0] == shape[1]
    q = torch_path(quantize, x, exact_diagonal=diagonal, **kw)
    kq = kernel_path(quantize, x, exact_diagonal=diagonal, **kw)
    assert torch.equal(kq.codes, q.codes) and torch.equal(kq.scales, q.scales)
    assert torch.equal(kernel_path(dequantize, q), torch_path(dequantize, q))
    assert calls == {"encode": 1, "decode": 1}


@needs_triton
@pytest.mark.parametrize("name,bits", FORMATS)
def test_ties_go_to_the_lower_entry(name, bits):
    """Values exactly on a midpoint between two levels (a chunk whose absmax is 1, so the
    normalised values are the values) round down, as torch.bucketize does."""
    mids = codebook_midpoints(name, bits, DEVICE)
    x = torch.cat([torch.ones(1, device=DEVICE), mids, -mids, codebook(name, bits, DEVICE)])
    kw = dict(block_size=x.numel(), codebook=name, bits=bits)
    codes, scales = kernel_path(encode, x, **kw)
    assert torch.equal(codes, torch_path(encode, x, **kw)[0])
    m = mids.numel()
    assert torch.equal(codes[1 : m + 1].long(), torch.arange(m, device=DEVICE))


# --------------------------------------------------------------------------- the matmul


@needs_triton
@pytest.mark.parametrize("n,m,bs,bits", [(70, 33, 64, 4), (21, 40, 8, 8), (5, 3, 4, 3)])
def test_root_matmul(n, m, bs, bits):
    """``L_hat @ G`` and ``G @ L_hat`` decoded inside the matmul against decoding then ``bmm``.
    The sums run in another order, so they agree to fp32 rounding: each of the two is within
    ``n * eps * (|L_hat| @ |G|)`` of the exact product, entry by entry."""
    qs = [torch_path(quantize, x + x.T, layout="tril", exact_diagonal=True, block_size=bs,
                     bits=bits) for x in rand(2, n, n, seed=m)]  # fmt: skip
    L = torch_path(dequantize_symmetric, qs)
    args = [torch.stack([getattr(q, a) for q in qs]) for a in ("codes", "scales", "diag")]
    kw = dict(block_size=bs, codebook=codebook("linear2", bits, DEVICE), bits=bits)
    bound = 2 * n * torch.finfo(torch.float32).eps
    for G, right in ((rand(2, n, m, seed=1), False), (rand(2, m, n, seed=2), True)):
        got = kernels.root_matmul(*args, G, right=right, **kw)
        ref, mag = (G @ L, G.abs() @ L.abs()) if right else (L @ G, L.abs() @ G.abs())
        assert got.shape == ref.shape
        assert torch.all((got - ref).abs() <= bound * mag)


# --------------------------------------------------------------------------- the optimizer


@needs_triton
@pytest.mark.parametrize("bits", [4, 8])
def test_optimizer_steps_identical(bits, calls):
    """Statistics, roots and preconditioning through the kernels: the same parameters and
    state as through the torch operators, bit for bit (CQ+EF)."""
    with torch.device(DEVICE):
        init = torch.nn.Linear(20, 9).state_dict()
    grads = [(rand(9, 20, seed=i), rand(9, seed=10 + i)) for i in range(4)]

    def run(mode):
        model = torch.nn.Linear(20, 9).to(DEVICE)
        model.load_state_dict(init)
        opt = qshampoo.Shampoo4bit(model.parameters(), lr=0.1, stat_interval=1, root_interval=2,
                                   block_size=8, bits=bits, min_quant_numel=0)  # fmt: skip
        with kernels.using(mode):
            for gw, gb in grads:
                model.weight.grad, model.bias.grad = gw.clone(), gb.clone()
                opt.step()
        return model, opt

    ref, ref_opt = run("off")
    assert calls == {"encode": 0, "decode": 0}
    got, got_opt = run("on")
    assert calls["encode"] > 0 and calls["decode"] > 0
    assert torch.equal(got.weight, ref.weight) and torch.equal(got.bias, ref.bias)
    got_state, ref_state = got_opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert got_state.keys() == ref_state.keys()
    for key in got_state:
        a, b = got_state[key], ref_state[key]
        assert a.keys() == b.keys()
        for name, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[name]), name


@needs_triton
def test_a_launch_counts_as_one_operator():
    """``DispatchCounter`` counts a kernel launch as one operator, ``triton.<kernel>``, and
    nothing that runs inside it (the interpreter's own torch operators, on the CPU); the torch
    path of the same call dispatches many."""
    from qshampoo.dispatch import DispatchCounter

    x = rand(2, 70, 70, seed=3)
    fmt = dict(layout="tril", block_size=8, codebook="linear2", bits=4)
    with DispatchCounter() as torch_ops:
        torch_path(encode, x, **fmt)
    with DispatchCounter() as launched:
        codes, scales = kernel_path(encode, x, **fmt)
    with DispatchCounter() as decoded:
        kernel_path(decode, codes, scales, (70, 70), **fmt)
    assert launched.by_op["triton.encode_tril"] == 1
    assert decoded.by_op["triton.decode_tril"] == 1
    # around the launch: the outputs' allocations and a few views only
    assert launched.ops <= 8 and decoded.ops <= 8, (launched.by_op, decoded.by_op)
    assert torch_ops.ops > 5 * launched.ops
    assert launched.syncs == decoded.syncs == 0
