"""Pictures for TensorBoard's IMAGES tab: the confusion matrix as a heat map, digits in a labelled grid.

Drawn with Pillow, already a dependency, rather than matplotlib: a 10x10 table of counts and a few
dozen 28x28 digits need no plotting library, and drawing them takes a few milliseconds.
Every function returns a (3, H, W) uint8 tensor, what `SummaryWriter.add_image` takes.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont
import torch
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

CELL = 30  # pixels per confusion-matrix cell: room for a four-digit count
TITLE_HEIGHT = 18
LABEL_SIZE = 18  # the strip that holds the class digits along each axis
CORRECT_COLOUR = (31, 119, 180)  # blue: the diagonal
ERROR_COLOUR = (214, 39, 40)  # red: confusions
DIGIT_SCALE = 2  # 28x28 digits are shown at 56x56
CAPTION_HEIGHT = 14


def _font(size: int = 11) -> ImageFont.ImageFont:
    # Pillow's bundled font at this size where FreeType is available, its bitmap font elsewhere.
    return ImageFont.load_default(size=size)


def _centred_text(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, font, fill) -> None:
    # textbbox rather than anchor=: anchors need FreeType, the bitmap fallback font has none.
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2), text, font=font, fill=fill)


def _blend(colour: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """White blended towards colour; amount in [0, 1]."""
    return tuple(round(255 + (c - 255) * amount) for c in colour)


def confusion_matrix_image(matrix: torch.Tensor) -> torch.Tensor:
    """A (classes, classes) count matrix, rows true and columns predicted, as a heat map with counts.

    A cell's shade is its share of the true class (the row), square-rooted so that a confusion
    of a few percent still shows; the diagonal is blue, confusions red, empty cells blank.
    """
    counts = matrix.detach().long().cpu()
    classes = counts.shape[0]
    share = (counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)).sqrt()
    left, top = LABEL_SIZE, TITLE_HEIGHT + LABEL_SIZE
    image = Image.new("RGB", (left + classes * CELL + 2, top + classes * CELL + 2), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    _centred_text(draw, (image.width / 2, TITLE_HEIGHT / 2), "rows: true class, columns: predicted", font, "black")
    for k in range(classes):
        _centred_text(draw, (left + (k + 0.5) * CELL, TITLE_HEIGHT + LABEL_SIZE / 2), str(k), font, "black")
        _centred_text(draw, (LABEL_SIZE / 2, top + (k + 0.5) * CELL), str(k), font, "black")
    for row in range(classes):
        for col in range(classes):
            x, y = left + col * CELL, top + row * CELL
            amount = float(share[row, col])
            fill = _blend(CORRECT_COLOUR if row == col else ERROR_COLOUR, amount)
            draw.rectangle((x, y, x + CELL, y + CELL), fill=fill, outline=(210, 210, 210))
            if counts[row, col]:
                ink = "white" if amount > 0.6 else "black"
                _centred_text(draw, (x + CELL / 2, y + CELL / 2), str(int(counts[row, col])), font, ink)
    return pil_to_tensor(image)


def note_image(text: str) -> torch.Tensor:
    """A small picture holding one line of text, for a dashboard that has nothing to show this time."""
    image = Image.new("RGB", (240, 30), "black")
    _centred_text(ImageDraw.Draw(image), (120, 15), text, _font(), "white")
    return pil_to_tensor(image)


def digit_grid(images: torch.Tensor, captions: list[str], columns: int = 8) -> torch.Tensor:
    """Digits (N, 28, 28), in any normalization, in a grid with a caption under each.

    Each digit is stretched to its own min..max, which undoes MNIST's affine normalization
    without having to know its constants.
    """
    size = (28 * DIGIT_SCALE, 28 * DIGIT_SCALE)
    font = _font()
    tiles = []
    for digit, caption in zip(images.detach().float().cpu(), captions):
        low, high = digit.min(), digit.max()
        pixels = ((digit - low) / (high - low).clamp(min=1e-6) * 255).round().to(torch.uint8)
        tile = Image.new("RGB", (size[0], size[1] + CAPTION_HEIGHT), "black")
        tile.paste(to_pil_image(pixels).resize(size, Image.Resampling.NEAREST).convert("RGB"))
        draw = ImageDraw.Draw(tile)
        _centred_text(draw, (size[0] / 2, size[1] + CAPTION_HEIGHT / 2), caption, font, (255, 215, 0))
        tiles.append(pil_to_tensor(tile))
    return make_grid(torch.stack(tiles), nrow=columns, padding=2, pad_value=96)
