"""Turning the user's image files into MNIST digits: preprocessing, finding files, unreadable files."""

import struct
import zlib

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mnist_rnn.data.images import find_image_files, read_digit, read_digits, to_mnist_digit
from mnist_rnn.data.mnist_files import load_split
from mnist_rnn.errors import PredictInputError


@pytest.fixture(scope="module")
def digits():
    images, labels = load_split("test")
    return images[:20], labels[:20]


def close_to(made: torch.Tensor, original: torch.Tensor) -> bool:
    """The same digit drawn alike: cosine similarity above 0.95 (two different test digits reach 0.90)."""
    return F.cosine_similarity(made.flatten().float(), original.flatten().float(), dim=0).item() > 0.95


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    pixels = image.float()
    index = torch.arange(pixels.shape[0], dtype=torch.float32)
    return float((pixels.sum(1) * index).sum() / pixels.sum()), float((pixels.sum(0) * index).sum() / pixels.sum())


def test_an_mnist_digit_comes_back_as_itself(digits):
    for image in digits[0]:
        assert close_to(to_mnist_digit(Image.fromarray(image.numpy())), image)


def test_dark_ink_on_light_paper_is_inverted(digits):
    for image in digits[0]:
        made = to_mnist_digit(Image.fromarray(255 - image.numpy()))
        assert close_to(made, image)


def test_large_off_centre_digit_is_cropped_scaled_to_20px_and_centred_by_mass(digits):
    image = digits[0][0]
    big = Image.fromarray(255 - image.numpy()).resize((200, 200), Image.Resampling.BICUBIC)
    sheet = Image.new("L", (500, 300), 255)
    sheet.paste(big, (20, 90))  # far off the sheet's centre
    made = to_mnist_digit(sheet)
    rows, cols = made.amax(1).nonzero(), made.amax(0).nonzero()
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) in (20, 21)  # 20 px plus anti-aliasing
    assert centre_of_mass(made) == pytest.approx((14.0, 14.0), abs=0.6)
    assert close_to(made, image)


def test_coloured_ink_on_coloured_paper(digits):
    image = digits[0][1]
    ink = (image.float() / 255).unsqueeze(-1)
    paper, pen = torch.tensor([240.0, 230.0, 190.0]), torch.tensor([20.0, 40.0, 160.0])
    rgb = (paper * (1 - ink) + pen * ink).round().to(torch.uint8).numpy()
    assert close_to(to_mnist_digit(Image.fromarray(rgb, "RGB")), image)


def test_black_strokes_on_a_transparent_sheet_are_not_lost(digits):
    image = digits[0][2]
    sheet = Image.new("RGBA", (28, 28), (0, 0, 0, 0))  # black ink; only alpha draws the digit
    sheet.putalpha(Image.fromarray(image.numpy()))
    assert close_to(to_mnist_digit(sheet), image)


def test_a_blank_picture_gives_an_empty_frame():
    assert not to_mnist_digit(Image.new("L", (50, 40), 200)).any()


def test_find_image_files(tmp_path):
    for name in ("b.png", "a.jpg", ".DS_Store"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"x")
    assert [p.name for p in find_image_files(str(tmp_path))] == ["a.jpg", "b.png"]  # sorted, not below
    assert [p.name for p in find_image_files(str(tmp_path / "b.png"))] == ["b.png"]
    assert [p.name for p in find_image_files(str(tmp_path / "**" / "*.png"))] == ["b.png", "c.png"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("empty", "is an empty folder"),
        ("*.png", "matches no file"),
        ("missing.png", "does not exist"),
    ],
)
def test_nothing_to_predict_names_the_path(tmp_path, spec, message):
    (tmp_path / "empty").mkdir()
    path = str(tmp_path / spec)
    with pytest.raises(PredictInputError, match=message) as err:
        find_image_files(path)
    assert path in str(err.value) and "\n" not in str(err.value)


def write_huge_png(path, side: int) -> None:
    """A valid greyscale PNG of side x side white pixels, compressed row by row: never held in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row, data = zlib.compressobj(1), b"\x00" + b"\xff" * side, bytearray()
    for _ in range(side):
        data += compressor.compress(row)
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(data)) + chunk(b"IEND", b""))


def test_unreadable_files_say_why(tmp_path, digits):
    good = tmp_path / "good.png"
    Image.fromarray(digits[0][0].numpy()).save(good)
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:-40])
    write_huge_png(tmp_path / "huge.png", 20_000)
    reasons = {
        "notes.txt": "not an image Pillow can read",
        "empty.png": "empty file",
        "truncated.png": "truncated",
        "huge.png": "too large to decode safely",
    }
    for name, reason in reasons.items():
        with pytest.raises(PredictInputError, match=reason):
            read_digit(tmp_path / name)
    result = read_digits(str(tmp_path))
    assert result.paths == [str(good)]
    assert sorted(name.rsplit("/", 1)[-1] for name, _ in result.skipped) == sorted(reasons)


def test_a_folder_of_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(PredictInputError, match=r"no readable image among 2 files: .*empty\.png: empty file"):
        read_digits(str(tmp_path))


@pytest.mark.parametrize("suffix", ["gif", "tif"])
def test_animations_and_multipage_files_give_their_first_frame(tmp_path, digits, suffix):
    first, second = (Image.fromarray(image.numpy()) for image in digits[0][:2])
    path = tmp_path / f"frames.{suffix}"
    first.save(path, save_all=True, append_images=[second])
    with Image.open(path) as check:
        assert check.n_frames == 2
    made = read_digit(path)
    assert close_to(made, digits[0][0]) and not close_to(made, digits[0][1])
