"""Property-based fuzzing of every input the project reads: IDX files, images, sweep files, serve's API.

Each property holds for every input Hypothesis draws: the reader gives a valid result, or refuses
with one of the project's `MnistRnnError`s, whose message is one line that names the culprit (and,
for serve, a 4xx JSON answer with a one-line reason). Any other exception fails the test, and
Hypothesis prints the smallest input that raised it.

Every test runs twice: `default` (derandomized, so CI draws the same inputs each run) and `slow`
(ten times the examples, fresh ones each run; `pytest -m slow`). No example database is kept.
"""

from __future__ import annotations

import gzip
import math
import struct
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_rnn.errors import DatasetError
from mnist_rnn.mnist_files import IDX_FILES, load_split, parse_idx, read_idx

# deadline None: the 2-core machine is shared, an example's time says nothing; database None:
# nothing under .hypothesis/ (the inputs come from the seed, not from earlier failures).
settings.register_profile(
    "fuzz-default", deadline=None, database=None, derandomize=True, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("fuzz-slow", parent=settings.get_profile("fuzz-default"), derandomize=False)
BUDGETS = [pytest.param(1, id="default"), pytest.param(10, id="slow", marks=pytest.mark.slow)]


def examples(budget: int, n: int):
    """The settings of one property: n examples by default, 10 n under `slow`."""
    return settings(settings.get_profile("fuzz-default" if budget == 1 else "fuzz-slow"), max_examples=n * budget)


def one_line(err: BaseException, *culprits: object) -> str:
    """The message of a refusal: one line, naming every culprit given."""
    message = str(err)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    for culprit in culprits:
        assert str(culprit) in message, (culprit, message)
    return message


# ---------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------

SIZES = st.one_of(
    st.integers(0, 30), st.just(28), st.sampled_from([2**31, 2**32 - 1, 2**21, 2**22, 2**16]), st.integers(0, 2**32 - 1)
)


@st.composite
def idx_bytes(draw, dims: int) -> bytes:
    """An IDX file, often nearly valid: its magic, its sizes, and a payload of about the right length."""
    declared = draw(st.integers(0, 4) if draw(st.booleans()) else st.just(dims))
    magic = draw(st.one_of(st.just(bytes([0, 0, 8, declared])), st.binary(min_size=4, max_size=4)))
    shape = draw(st.lists(SIZES, min_size=declared, max_size=declared))
    true = math.prod(shape)
    length = draw(st.one_of(st.integers(0, 64), st.just(true), st.integers(true - 3, true + 3))) if true <= 4000 else draw(
        st.integers(0, 200)
    )
    payload = draw(st.binary(min_size=max(length, 0), max_size=max(length, 0))) if length <= 4000 else b""
    raw = magic + b"".join(struct.pack(">I", n) for n in shape) + payload
    cut = draw(st.one_of(st.just(len(raw)), st.integers(0, len(raw))))
    return raw[:cut]


@pytest.mark.parametrize("budget", BUDGETS)
def test_parse_idx_gives_the_declared_tensor_or_a_one_line_value_error(budget):
    @examples(budget, 150)
    @given(dims=st.sampled_from([1, 3]), data=st.data())
    def check(dims, data):
        raw = data.draw(idx_bytes(dims))
        try:
            tensor = parse_idx(raw, dims)
        except ValueError as err:
            one_line(err)
            return
        header = 4 + 4 * dims
        shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
        # Accepted: exactly the declared shape, holding exactly the file's bytes (so it allocated the true size).
        assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == shape
        assert tensor.numel() == len(raw) - header and bytes(tensor.flatten().tolist()) == raw[header:]

    check()


@st.composite
def idx_file(draw, kind: str) -> bytes:
    """The bytes of an images or labels file: a valid one (gzip or not), altered, truncated, or garbage."""
    n = draw(st.integers(0, 4))
    if kind == "images":
        side = draw(st.sampled_from([28, 28, 28, 27, 1, 0]))
        raw = bytes([0, 0, 8, 3]) + struct.pack(">III", n, side, 28) + draw(st.binary(min_size=n * side * 28, max_size=n * side * 28))
    else:
        raw = bytes([0, 0, 8, 1]) + struct.pack(">I", n) + bytes(draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)))
    raw = draw(st.one_of(st.just(raw), idx_bytes(3 if kind == "images" else 1), st.binary(max_size=64)))
    return raw


@st.composite
def stored(draw, raw: bytes) -> tuple[str, bytes]:
    """(suffix, file content): raw, gzip-compressed, or a gzip stream cut short or flipped."""
    how = draw(st.sampled_from(["raw", "gz", "gz-cut", "gz-flip", "raw-as-gz"]))
    if how == "raw":
        return "", raw
    packed = gzip.compress(raw, mtime=0)
    if how == "gz-cut":
        packed = packed[: draw(st.integers(0, len(packed) - 1))]
    elif how == "gz-flip":
        at = draw(st.integers(0, len(packed) - 1))
        packed = packed[:at] + bytes([packed[at] ^ draw(st.integers(1, 255))]) + packed[at + 1 :]
    elif how == "raw-as-gz":
        packed = raw
    return ".gz", packed


def check_idx_result(tensor: torch.Tensor, kind: str) -> None:
    if kind == "images":
        assert tensor.dtype == torch.uint8 and tensor.dim() == 3 and tuple(tensor.shape[1:]) == (28, 28)
    else:
        assert tensor.dtype == torch.int64 and tensor.dim() == 1
        assert tensor.numel() == 0 or 0 <= int(tensor.min()) <= int(tensor.max()) <= 9


@pytest.mark.parametrize("budget", BUDGETS)
def test_read_idx_gives_mnist_tensors_or_a_dataset_error_naming_the_file(budget, tmp_path):
    @examples(budget, 80)
    @given(kind=st.sampled_from(["images", "labels"]), data=st.data())
    def check(kind, data):
        suffix, content = data.draw(stored(data.draw(idx_file(kind))))
        path = tmp_path / f"{kind}{suffix}"
        path.write_bytes(content)
        try:
            tensor = read_idx(path, kind)
        except DatasetError as err:
            one_line(err, path)
            return
        check_idx_result(tensor, kind)

    check()


@pytest.mark.parametrize("budget", BUDGETS)
def test_a_data_dir_gives_a_split_or_a_dataset_error_naming_the_folder_or_file(budget, tmp_path_factory):
    @examples(budget, 25)
    @given(layout=st.sampled_from(["", "raw", "FashionMNIST/raw"]), split=st.sampled_from(["train", "test"]), data=st.data())
    def check(layout, split, data):
        data_dir = tmp_path_factory.mktemp("data_dir")
        for (_, kind), name in IDX_FILES.items():
            if data.draw(st.integers(0, 9), label=f"{name} missing") == 0:
                continue
            suffix, content = data.draw(stored(data.draw(idx_file(kind))), label=name)
            (data_dir / layout).mkdir(parents=True, exist_ok=True)
            (data_dir / layout / (name + suffix)).write_bytes(content)
        try:
            images, labels = load_split(split, data_dir)
        except DatasetError as err:
            one_line(err, data_dir)
            return
        check_idx_result(images, "images")
        check_idx_result(labels, "labels")
        assert len(images) == len(labels)

    check()


# A file of about 100 bytes that declares 2**31 images of 28x28 (1.7 TB): refused without allocating it.
HUGE_IMAGES = bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 28, 28) + bytes(84)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_a_small_file_declaring_a_huge_size_is_refused_without_allocating_it(tmp_path, suffix):
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(HUGE_IMAGES) if suffix else HUGE_IMAGES)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as refused:
            read_idx(path, "images")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "expected 1683627180048" in one_line(refused.value, path)  # 16 + 2**31 * 784, not a wrapped count
    # Python's allocations while reading: a few copies of the file's 100 bytes plus fixed costs,
    # measured 4.6 KiB plain and 73 KiB gzip (zlib's buffers; a valid 2-image .gz takes the same)
    # on the AMD EPYC, 2026-12-01. 128 KiB + 4x the file: room for both, 10**7 times below 1.7 TB.
    assert peak < 128 * 1024 + 4 * path.stat().st_size, peak


def test_sizes_whose_product_wraps_around_64_bits_are_refused():
    # Found by the fuzzing (slow): 28 * 2**31 * 2**31 = 7 * 2**64, which torch.Size.numel() wrapped to 0,
    # so this 16-byte file "matched" its shape and torch.zeros raised RuntimeError (storage size overflow).
    raw = bytes([0, 0, 8, 3]) + struct.pack(">III", 28, 2**31, 2**31)
    with pytest.raises(ValueError, match=r"^16 bytes for shape \(28, 2147483648, 2147483648\), expected 129127208515966861328$"):
        parse_idx(raw, 3)
