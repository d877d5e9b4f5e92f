import pytest
import torch

from qshampoo.quant import CODEBOOK_NAMES, codebook, max_rounding_error

LINEAR2_4 = [-1, -0.751111, -0.537778, -0.36, -0.217778, -0.111111, -0.04, 0,
             0.004444, 0.04, 0.111111, 0.217778, 0.36, 0.537778, 0.751111, 1]  # fmt: skip
DYNAMIC_TREE_4 = [-0.8875, -0.6625, -0.4375, -0.2125, -0.0775, -0.0325, -0.0055, 0,
                  0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875, 1]  # fmt: skip


def test_linear2_4bit_table():
    cb = codebook("linear2", 4)
    assert cb.dtype == torch.float32
    torch.testing.assert_close(cb, torch.tensor(LINEAR2_4, device="cpu"), atol=1e-6, rtol=0)


def test_dynamic_tree_4bit_table():
    cb = codebook("dynamic_tree", 4)
    assert cb.dtype == torch.float32
    torch.testing.assert_close(cb, torch.tensor(DYNAMIC_TREE_4, device="cpu"), atol=1e-6, rtol=0)


def test_linear2_3bit_construction():
    v = torch.linspace(-1, 1, 8, dtype=torch.float64, device="cpu")
    v[3] = 0
    expected = torch.sign(v) * v**2
    torch.testing.assert_close(codebook("linear2", 3).double(), expected, atol=1e-7, rtol=0)


def test_dynamic_tree_3bit_table():
    expected = torch.tensor([-0.775, -0.325, -0.055, 0, 0.055, 0.325, 0.775, 1.0], device="cpu")
    torch.testing.assert_close(codebook("dynamic_tree", 3), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", CODEBOOK_NAMES)
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_size_sorted_range_and_special_values(name, bits):
    cb = codebook(name, bits)
    assert cb.shape == (2**bits,)
    assert cb.unique().numel() == 2**bits  # distinct
    assert torch.all(cb[1:] > cb[:-1])  # strictly sorted
    assert cb.min() >= -1 and cb.max() == 1
    assert (cb == 0).sum() == 1
    if name == "linear2":
        assert cb[0] == -1


def test_linear2_zero_replaces_entry_below_zero():
    for bits in (3, 4, 8):
        cb = codebook("linear2", bits)
        assert cb[2 ** (bits - 1) - 1] == 0
        assert cb[2 ** (bits - 1) - 2] < 0 < cb[2 ** (bits - 1)]


def test_cached_per_device_and_on_requested_device():
    a = codebook("linear2", 4)
    b = codebook("linear2", 4, device="cpu")
    assert a is b
    assert codebook("linear2", 4, device=torch.device("cpu")).device.type == "cpu"
    assert codebook("dynamic_tree", 4) is not a


def test_max_rounding_error_is_a_real_bound():
    for name in CODEBOOK_NAMES:
        for bits in (3, 4, 8):
            cb = codebook(name, bits).double()
            y = torch.linspace(-1, 1, 100_001, dtype=torch.float64, device=cb.device)
            worst = (y.unsqueeze(1) - cb).abs().min(dim=1).values.max().item()
            assert worst <= max_rounding_error(name, bits) + 1e-12
            assert worst >= max_rounding_error(name, bits) - 1e-4  # and it is tight


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="codebook.*linear2"):
        codebook("uniform", 4)
    with pytest.raises(ValueError, match=r"bits.*\[3, 4, 8\]"):
        codebook("linear2", 5)
    with pytest.raises(ValueError, match="bits"):
        codebook("dynamic_tree", 2)


@pytest.mark.parametrize("name", ["linear2", "dynamic_tree"])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_nearest_codes_equals_bucketize(name, bits):
    from qshampoo.quant.codebooks import codebook_midpoints, nearest_codes

    mids = codebook_midpoints(name, bits, torch.get_default_device())
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    y = torch.cat(
        [
            torch.rand(20000, generator=g) * 2 - 1,
            (torch.rand(20000, generator=g) * 2 - 1) ** 5,  # crowd near zero
            mids,  # ties go to the lower entry
            torch.nextafter(mids, torch.full_like(mids, 2.0)),
            torch.nextafter(mids, torch.full_like(mids, -2.0)),
            torch.tensor([-1.0, 0.0, 1.0, -0.0]),
        ]
    )
    expected = torch.bucketize(y, mids).to(torch.uint8)
    assert torch.equal(nearest_codes(y, name, bits), expected)
