"""The four IDX files of MNIST (or Fashion-MNIST, KMNIST, ...): found, checked and parsed into tensors.

The embedded copy is checked against its vendored MD5 sums. Every failure is a DatasetError that
names the file: a wrong dataset must never be used silently.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path
from typing import Optional

import torch

from mnist_rnn.errors import DatasetError

# The four IDX files of an MNIST-format dataset (Fashion-MNIST and KMNIST use the same names).
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

EMBEDDED_DIR = Path(__file__).parents[1] / "assets" / "mnist"

# IDX's header: two zero bytes, a type code, the number of dimensions; then each size as a
# big-endian int32. MNIST's files hold unsigned bytes, type 0x08.
_UBYTE = 0x08


def embedded_checksums() -> dict[str, str]:
    """MD5 of the uncompressed content of each embedded file, from the vendored MD5SUMS."""
    lines = (EMBEDDED_DIR / "MD5SUMS").read_text().splitlines()
    pairs = (line.split() for line in lines if line.strip() and not line.startswith("#"))
    return {name: digest for digest, name in pairs}


def parse_idx(raw: bytes, dims: int) -> torch.Tensor:
    """The uint8 tensor an IDX file of unsigned bytes holds; ValueError when it is not one."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError("no IDX header")
    if raw[2] != _UBYTE:
        raise ValueError(f"element type 0x{raw[2]:02x}, expected 0x08 (unsigned bytes)")
    if raw[3] != dims:
        raise ValueError(f"{raw[3]} dimensions, expected {dims}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise ValueError("header cut short")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    expected = header + math.prod(shape)  # not torch.Size.numel(), which wraps around at 2**64
    if len(raw) != expected:
        raise ValueError(f"{len(raw)} bytes for shape {tuple(shape)}, expected {expected}")
    if expected == header:
        # An empty tensor still has strides, the products of the dimensions after each: torch
        # cannot index one whose strides pass 2**63 (a header of 0 x 2**32-1 x 2**32-1).
        if math.prod(max(size, 1) for size in shape) >= 2**63:
            raise ValueError(f"shape {tuple(shape)} is too large to index")
        return torch.zeros(shape, dtype=torch.uint8)  # frombuffer refuses an empty buffer
    # A bytearray: a writable buffer that the tensor then owns.
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def read_idx(path: Path, kind: str, expected_md5: Optional[str] = None) -> torch.Tensor:
    """Read one IDX file of 'images' (N, 28, 28) or 'labels' (N,), raw or gzip-compressed."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing") from None
    except (OSError, EOFError, zlib.error) as err:
        if getattr(err, "errno", None) is not None:  # the file system's (a folder, no permission), not gzip's
            raise DatasetError(f"{path}: cannot be read ({err.strerror}); give a readable file") from None
        raise DatasetError(f"{path}: cannot be decompressed ({err}); the file is truncated or corrupted, replace it") from None
    if expected_md5 is not None:
        actual = hashlib.md5(raw).hexdigest()
        if actual != expected_md5:
            raise DatasetError(
                f"{path}: content MD5 is {actual}, expected {expected_md5}; the file is altered or"
                " truncated, reinstall mnist-rnn to restore it"
            )
    try:
        tensor = parse_idx(raw, dims=3 if kind == "images" else 1)
    except ValueError as err:
        raise DatasetError(f"{path}: not a valid MNIST-format IDX {kind} file ({err})") from None
    if kind == "images" and tuple(tensor.shape[1:]) != (28, 28):
        raise DatasetError(f"{path}: images are {tuple(tensor.shape[1:])}, expected 28x28")
    if kind == "labels" and tensor.numel() and not 0 <= int(tensor.min()) <= int(tensor.max()) <= 9:
        raise DatasetError(f"{path}: labels must lie in 0..9, found {int(tensor.min())}..{int(tensor.max())}")
    return tensor if kind == "images" else tensor.long()


def find_idx_files(data_dir: Path) -> dict[tuple[str, str], Path]:
    """Locate the four IDX files in data_dir: flat, in raw/, or in torchvision's <NAME>/raw/ layout."""
    if not data_dir.is_dir():
        raise DatasetError(
            f"--data.data_dir {data_dir} {'is a file' if data_dir.exists() else 'does not exist'};"
            " point it at a folder of MNIST-format IDX files,"
            " add --data.download true to fetch MNIST there, or omit it to use the embedded MNIST"
        )
    folders = [data_dir, data_dir / "raw", *sorted(data_dir.glob("*/raw"))]
    found, missing = {}, []
    for key, name in IDX_FILES.items():
        hit = next((folder / f for folder in folders for f in (name, name + ".gz") if (folder / f).is_file()), None)
        if hit is None:
            missing.append(name)
        else:
            found[key] = hit
    if missing:
        what = "holds no MNIST-format IDX files" if not found else "lacks " + ", ".join(missing)
        raise DatasetError(
            f"--data.data_dir {data_dir} {what}; expected {', '.join(IDX_FILES.values())}"
            " (each raw or .gz) in it, in raw/ or in <NAME>/raw/; add --data.download true to fetch MNIST"
        )
    return found


def load_split(split: str, data_dir: Optional[Path] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of 'train' or 'test'; data_dir None: the embedded MNIST, MD5-checked."""
    if data_dir is None:
        sums = embedded_checksums()
        paths = {k: EMBEDDED_DIR / (name + ".gz") for k, name in IDX_FILES.items()}
    else:
        sums = {}
        paths = find_idx_files(data_dir)
    images_path, labels_path = paths[(split, "images")], paths[(split, "labels")]
    images = read_idx(images_path, "images", sums.get(IDX_FILES[(split, "images")]))
    labels = read_idx(labels_path, "labels", sums.get(IDX_FILES[(split, "labels")]))
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images, labels
