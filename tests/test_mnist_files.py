"""MNIST's files: checksums, parsing, and a clear error for every damaged or mismatched file."""

import gzip
import shutil

import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_rnn.data.mnist_files import EMBEDDED_DIR, load_split, read_idx
from mnist_rnn.errors import DatasetError
from tests.conftest import write_fake_mnist


@pytest.mark.parametrize("kind,name", [("images", "t10k-images-idx3-ubyte"), ("labels", "t10k-labels-idx1-ubyte")])
def test_parsing_matches_torchvisions_reader(tmp_path, kind, name):
    plain = tmp_path / name
    plain.write_bytes(gzip.decompress((EMBEDDED_DIR / f"{name}.gz").read_bytes()))
    reference = (read_image_file if kind == "images" else read_label_file)(str(plain))
    parsed = read_idx(EMBEDDED_DIR / f"{name}.gz", kind)
    assert parsed.dtype == reference.dtype and torch.equal(parsed, reference)


def test_an_empty_split_parses_as_empty(tmp_path):
    write_fake_mnist(tmp_path, n_test=0)
    images, labels = load_split("test", tmp_path)
    assert images.shape == (0, 28, 28) and labels.shape == (0,)


def test_altered_embedded_file_fails_checksum(embedded_copy):
    path = embedded_copy / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one label changed: still a valid IDX file
    path.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz: content MD5 is .*expected 27ae3e4e"):
        load_split("test")


def test_truncated_embedded_file_is_named(embedded_copy):
    path = embedded_copy / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz: .*truncated"):
        load_split("test")


def test_missing_embedded_file_is_named(embedded_copy):
    (embedded_copy / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz: file is missing"):
        load_split("train")


def test_data_dir_with_mismatched_counts(tmp_path):
    write_fake_mnist(tmp_path)
    other = tmp_path / "other"
    write_fake_mnist(other, n_test=40)
    shutil.copy(other / "t10k-labels-idx1-ubyte", tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DatasetError, match="holds 50 images but .* holds 40 labels"):
        load_split("test", tmp_path)
