import pytest
import torch

from qshampoo.quant import pack, packed_numel, unpack

SIZES = [0, 1, 7, 63, 1001]


def _reference_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Little-endian bit stream through a Python big integer."""
    value = 0
    for k, c in enumerate(codes.tolist()):
        value |= c << (k * bits)
    nbytes = (len(codes) * bits + 7) // 8
    return torch.tensor(list(value.to_bytes(nbytes, "little")), dtype=torch.uint8)


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("n", SIZES)
def test_round_trip_and_size(bits, n):
    g = torch.Generator(torch.get_default_device()).manual_seed(n * 10 + bits)
    codes = torch.randint(0, 2**bits, (n,), dtype=torch.uint8, generator=g)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (-(-n * bits // 8),)
    assert packed.numel() == packed_numel(n, bits)
    out = unpack(packed, bits, n)
    assert out.dtype == torch.uint8 and out.shape == (n,)
    assert torch.equal(out, codes)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_layout_matches_little_endian_bit_stream(bits):
    g = torch.Generator(torch.get_default_device()).manual_seed(bits)
    codes = torch.randint(0, 2**bits, (37,), dtype=torch.uint8, generator=g)
    assert torch.equal(pack(codes, bits), _reference_pack(codes, bits))
    assert torch.equal(unpack(pack(codes, bits), bits, 37), codes)


def test_4bit_nibble_order():
    codes = torch.tensor([1, 2, 3, 4, 15], dtype=torch.uint8)
    assert pack(codes, 4).tolist() == [0x21, 0x43, 0x0F]


def test_3bit_eight_codes_in_three_bytes():
    codes = torch.arange(8, dtype=torch.uint8)
    assert pack(codes, 3).numel() == 3
    assert pack(torch.arange(16, dtype=torch.uint8) % 8, 3).numel() == 6


def test_8bit_is_a_copy():
    codes = torch.arange(256, dtype=torch.uint8)
    packed = pack(codes, 8)
    assert torch.equal(packed, codes)
    packed[0] = 7
    assert codes[0] == 0


def test_two_4bit_matrices_share_bytes():
    # the Cholesky-EF use: one code of C and one of E per byte, C in the low nibble
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    c = torch.randint(0, 16, (101,), dtype=torch.uint8, generator=g)
    e = torch.randint(0, 16, (101,), dtype=torch.uint8, generator=g)
    packed = pack(torch.stack([c, e], dim=1).view(-1), 4)
    assert packed.numel() == 101
    assert torch.equal(packed & 0x0F, c) and torch.equal(packed >> 4, e)
    both = unpack(packed, 4, 202).view(-1, 2)
    assert torch.equal(both[:, 0], c) and torch.equal(both[:, 1], e)


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("n", [1, 6, 37])
def test_rows_are_packed_one_by_one(bits, n):
    # a batch (..., N) packs each row as the 1-D call would, and unpacks back
    g = torch.Generator(torch.get_default_device()).manual_seed(bits * 100 + n)
    codes = torch.randint(0, 2**bits, (2, 3, n), dtype=torch.uint8, generator=g)
    packed = pack(codes, bits)
    assert packed.shape == (2, 3, (n * bits + 7) // 8)
    for i in range(2):
        for j in range(3):
            assert torch.equal(packed[i, j], pack(codes[i, j], bits))
    assert torch.equal(unpack(packed, bits, n), codes)


def test_errors():
    codes = torch.zeros(4, dtype=torch.uint8)
    with pytest.raises(TypeError, match="codes"):
        pack(codes.to(torch.int64), 4)
    with pytest.raises(ValueError, match="codes"):
        pack(codes[0], 4)  # 0-d
    with pytest.raises(ValueError, match="bits"):
        pack(codes, 9)
    with pytest.raises(ValueError, match="bits"):
        unpack(codes, 0, 4)
    with pytest.raises(ValueError, match="packed"):
        unpack(pack(codes, 4), 4, 5)
    with pytest.raises(TypeError, match="packed"):
        unpack(codes.float(), 4, 4)
