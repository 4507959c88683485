"""The user's own digit images, turned into MNIST digits the way MNIST's were made.

MNIST's digits are white ink on black, cropped, the longer side scaled to 20 px with anti-aliasing,
and centred by centre of mass at pixel (14, 14) of a 28x28 frame; a model trained on them recognizes
only digits prepared the same way. Each file is read on its own: one that Pillow cannot read, or too
large to decode safely, is reported with the reason and skipped; the others are still predicted.
"""

from __future__ import annotations

import glob
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from mnist_rnn.errors import PredictInputError

# MNIST's geometry: the digit's longer side, the frame, and where its centre of mass lands.
DIGIT_SIZE = 20
FRAME_SIZE = 28
FRAME_CENTRE = 14.0

# Larger pictures are shrunk to this longer side before any arithmetic: a digit that fills even
# a tenth of such an image keeps 100 px, far more than the 20 it ends with, and memory stays small.
WORKING_SIDE = 1024

# After the background is removed and the strongest ink stretched to 255, what is fainter than
# this is paper texture, shadow or JPEG noise, not ink: it would widen the crop around the digit.
NOISE_FLOOR = 0.2 * 255

GLOB_CHARS = "*?["


@dataclass
class DigitImages:
    """What came out of reading the files: MNIST-like digits, their paths, and what was skipped."""

    images: torch.Tensor  # (N, 28, 28) uint8, ink high, like MNIST's IDX files
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def find_image_files(spec: str) -> list[Path]:
    """The files named by spec: a file, every file in a folder (not below it, and not the hidden ".DS_Store",
    "._scan.png", which are never the user's digits), or a glob pattern."""
    if not spec.strip():
        raise PredictInputError("--data.predict_path is empty; give an image file, a folder of images or a glob pattern")
    path = Path(spec).expanduser()
    if any(c in str(path) for c in GLOB_CHARS) and not path.exists():
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise PredictInputError(f"--data.predict_path {spec} matches no file; check the pattern and quote it")
        return files
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise PredictInputError(f"--data.predict_path {spec} is an empty folder; put digit images in it")
        return files
    raise PredictInputError(f"--data.predict_path {spec} does not exist; give an image file, a folder of images or a glob pattern")


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Lay a picture with transparency on paper that contrasts with its opaque strokes: converting RGBA straight
    to grey drops alpha, and transparent pixels, often stored black, would turn black ink into a black square."""
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    alpha = pil_to_tensor(rgba.getchannel("A"))[0].float()
    grey = pil_to_tensor(rgba.convert("L"))[0].float()
    opaque_brightness = (grey * alpha).sum() / alpha.sum().clamp(min=1.0)
    paper = 255 if opaque_brightness < 128 else 0
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (paper, paper, paper, 255)), rgba)


def to_mnist_digit(image: Image.Image) -> torch.Tensor:
    """One picture of a digit -> (28, 28) uint8, white ink on black, sized and centred like MNIST."""
    image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
    if image.mode == "LAB":  # a CIELab TIFF: Pillow converts LAB to no other mode, and L is its grey
        image = image.getchannel("L")
    image = _flatten_alpha(image).convert("L")
    if max(image.size) > WORKING_SIDE:
        image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
    pixels = pil_to_tensor(image)[0].float()

    # The border is mostly paper: light paper means dark ink, which MNIST stores inverted.
    border = torch.cat([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = border.median()
    if background > 127:
        pixels, background = 255 - pixels, 255 - background
    ink = (pixels - background).clamp_(min=0)
    peak = ink.max()
    frame = torch.zeros(FRAME_SIZE, FRAME_SIZE, dtype=torch.uint8)
    if peak <= 0:
        return frame  # a blank picture: an empty frame, which the model still scores
    ink = ink * (255 / peak)
    ink[ink < NOISE_FLOOR] = 0

    rows = ink.amax(dim=1).nonzero()
    cols = ink.amax(dim=0).nonzero()
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = DIGIT_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = to_pil_image(crop.round().to(torch.uint8)).resize(size, Image.Resampling.LANCZOS)
    digit_pixels = pil_to_tensor(digit)[0].float()

    # Translate so that the centre of mass lands on the frame's centre, as MNIST did.
    mass = digit_pixels.sum().clamp(min=1.0)
    centre_y = (digit_pixels.sum(dim=1) * torch.arange(size[1])).sum() / mass
    centre_x = (digit_pixels.sum(dim=0) * torch.arange(size[0])).sum() / mass
    offset = (round(FRAME_CENTRE - float(centre_x)), round(FRAME_CENTRE - float(centre_y)))
    canvas = Image.new("L", (FRAME_SIZE, FRAME_SIZE))
    canvas.paste(digit, offset)
    return pil_to_tensor(canvas)[0]


def read_digit(source: Union[str, Path, bytes]) -> torch.Tensor:
    """One image (its first frame), a file (`predict`) or an upload's bytes (`serve`), as an MNIST digit;
    PredictInputError says why it cannot be."""
    try:
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        if size == 0:
            raise PredictInputError("empty file (0 bytes)")
        # Pillow warns above Image.MAX_IMAGE_PIXELS (about 89 million) and refuses above twice that;
        # both are refused here: decoding such a picture would take gigabytes for one digit.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on damaged metadata: the image is read or refused
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                # Animated GIFs and multi-page TIFFs open on their first frame, which is the one read.
                image.draft("L", (WORKING_SIDE, WORKING_SIDE))  # JPEG: decode at a reduced scale
                image.load()
                return to_mnist_digit(image)
    except PredictInputError:
        raise
    except UnidentifiedImageError:
        raise PredictInputError("not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PredictInputError(
            f"too large to decode safely (more than {Image.MAX_IMAGE_PIXELS:,} pixels); downscale it"
        ) from None
    except OSError as err:
        if err.errno is not None:  # the file itself: permissions, a vanished file, an I/O error
            raise PredictInputError(f"cannot be opened: {err.strerror}") from None
        raise PredictInputError(f"truncated or corrupt image data ({err})") from None
    except (ValueError, SyntaxError, EOFError, MemoryError) as err:  # what Pillow's decoders raise on broken data
        raise PredictInputError(f"cannot be decoded: {type(err).__name__}: {err}") from None


def read_digits(spec: str) -> DigitImages:
    """Every image named by spec (see find_image_files) as MNIST digits; unreadable files are skipped."""
    files = find_image_files(spec)
    digits, paths, skipped = [], [], []
    for path in files:
        try:
            digits.append(read_digit(path))
            paths.append(str(path))
        except PredictInputError as err:
            skipped.append((str(path), str(err)))
    if not digits:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        raise PredictInputError(f"--data.predict_path {spec}: no readable image among {len(files)} files: {reasons}{more}")
    return DigitImages(torch.stack(digits), paths, skipped)
