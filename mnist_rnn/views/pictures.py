"""The views' pictures, drawn with Pillow: what `SummaryWriter.add_image` takes, a (3, H, W) uint8 tensor.

Not matplotlib figures for `add_figure`: measured, those made each validation more than twice as
long, for the same information (docs/dashboards.md, Why Pillow draws the pictures, not matplotlib)."""

from __future__ import annotations

import itertools
import math

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

# TensorBoard 2.21's IMAGES tab shows every picture 350 CSS px wide, scaling it up or down, unless "Show actual image
# size" is ticked (measured in Chromium in windows 1280, 1600 and 1920 px wide: docs/dashboards.md). So the pictures
# are drawn about twice as wide, 720 px at most, with 24-px text: 12 px as shown, and sharp on a screen of two device
# pixels per CSS pixel. TIME SERIES shows them at most 215 px high.
SHOWN_WIDTH = 350
DRAWN_WIDTH = 2 * SHOWN_WIDTH
FONT_SIZE = 24
LINE_HEIGHT = 34  # a line of text with its spacing

# The dashboards' pictures.

CELL = 64  # pixels per confusion-matrix cell: room for a four-digit count (57 px)
LABEL_SIZE = 36  # the strip that holds the class digits along each axis, and the title's
CORRECT_COLOUR = (31, 119, 180)  # blue: the diagonal
ERROR_COLOUR = (214, 39, 40)  # red: confusions
DIGIT_SCALE = 3  # 28x28 digits are shown at 84x84: eight across, 690 px
CAPTION_HEIGHT = 32


def text_font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    # Pillow's bundled font at this size where FreeType is available, its bitmap font elsewhere.
    return ImageFont.load_default(size=size)


def fitting_font(draw: ImageDraw.ImageDraw, text: str, width: float) -> ImageFont.ImageFont:
    """The text font, smaller where the text would be wider than width (a long title)."""
    size = FONT_SIZE
    while size > 12 and draw.textlength(text, font=text_font(size)) > width:
        size -= 1
    return text_font(size)


def centred_text(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, font, fill) -> None:
    # textbbox rather than anchor=: anchors need FreeType, the bitmap fallback font has none.
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2), text, font=font, fill=fill)


def confusion_matrix_image(matrix: torch.Tensor) -> torch.Tensor:
    """A (classes, classes) count matrix, rows true and columns predicted, as a heat map with counts.

    A cell's shade is its share of the true class (the row), square-rooted so that a confusion
    of a few percent still shows; the diagonal is blue, confusions red, empty cells blank."""
    counts = matrix.detach().long().cpu()
    classes = counts.shape[0]
    share = (counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)).sqrt()
    left, top = LABEL_SIZE, 2 * LABEL_SIZE
    image = Image.new("RGB", (left + classes * CELL + 2, top + classes * CELL + 2), "white")
    draw = ImageDraw.Draw(image)
    font = text_font()
    centred_text(draw, (image.width / 2, LABEL_SIZE / 2), "rows: true class, columns: predicted", font, "black")
    for k in range(classes):
        centred_text(draw, (left + (k + 0.5) * CELL, 1.5 * LABEL_SIZE), str(k), font, "black")
        centred_text(draw, (LABEL_SIZE / 2, top + (k + 0.5) * CELL), str(k), font, "black")
    for row in range(classes):
        for col in range(classes):
            x, y = left + col * CELL, top + row * CELL
            amount = float(share[row, col])
            colour = CORRECT_COLOUR if row == col else ERROR_COLOUR
            fill = tuple(round(255 + (c - 255) * amount) for c in colour)  # white blended towards the colour
            draw.rectangle((x, y, x + CELL, y + CELL), fill=fill, outline=(210, 210, 210))
            if counts[row, col]:
                ink = "white" if amount > 0.6 else "black"
                centred_text(draw, (x + CELL / 2, y + CELL / 2), str(int(counts[row, col])), font, ink)
    return pil_to_tensor(image)


def note_image(text: str) -> torch.Tensor:
    """One line of text, for a dashboard that has nothing to show this time."""
    image = Image.new("RGB", (DRAWN_WIDTH, 2 * LINE_HEIGHT), "black")
    centred_text(ImageDraw.Draw(image), (DRAWN_WIDTH / 2, LINE_HEIGHT), text, text_font(), "white")
    return pil_to_tensor(image)


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """Each digit stretched to [0, 1]: undoes any affine normalization without knowing its constants."""
    flat = images.detach().float().flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp(min=1e-6)).reshape(images.shape)


def digit_picture(digit: torch.Tensor, side: int) -> Image.Image:
    """One (28, 28) digit, in any normalization, as a side x side RGB picture."""
    pixels = (unit_range(digit[None])[0] * 255).round().to(torch.uint8).cpu()
    return to_pil_image(pixels).resize((side, side), Image.Resampling.NEAREST).convert("RGB")


def digit_grid(images: torch.Tensor, captions: list[str], columns: int = 8) -> torch.Tensor:
    """Digits (N, 28, 28), in any normalization, in a grid with a caption under each."""
    side = 28 * DIGIT_SCALE
    font = text_font()
    tiles = []
    for digit, caption in zip(images, captions):
        tile = Image.new("RGB", (side, side + CAPTION_HEIGHT), "black")
        tile.paste(digit_picture(digit, side))
        centred_text(ImageDraw.Draw(tile), (side / 2, side + CAPTION_HEIGHT / 2), caption, font, (255, 215, 0))
        tiles.append(pil_to_tensor(tile))
    return make_grid(torch.stack(tiles), nrow=columns, padding=2, pad_value=96)


# The recurrence views' pictures.

WIDTH, HEIGHT = DRAWN_WIDTH, DRAWN_WIDTH // 2
PLOT = (92, 44, WIDTH - 24, HEIGHT - 70)  # the axes' box (left, top, right, bottom): room for the labels around it
GRID_COLOUR = (225, 225, 225)


def _ticks(low: float, high: float, count: int = 6) -> list[float]:
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step  # round numbers: 10, 20, ... rather than 1, 11, 21
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def curve_image(series, title: str, x_label: str, log_y: bool = False) -> torch.Tensor:
    """Line chart of [(name, colour, xs, ys), ...]: y from 0 to 1, or with log_y the decades that hold the ys."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = text_font()
    left, top, right, bottom = PLOT
    xs_all = [x for _, _, xs, _ in series for x in xs]
    x_low, x_high = min(xs_all), max(max(xs_all), min(xs_all) + 1)

    def y_of(value: float) -> float:
        return math.log10(value) if log_y else value

    y_low, y_high = 0, 1
    if log_y:
        logs = [y_of(y) for _, _, _, ys in series for y in ys if math.isfinite(y) and y > 0]
        y_low, y_high = (math.floor(min(logs)), math.ceil(max(logs))) if logs else (-1, 0)
        y_high = max(y_high, y_low + 1)
    px = lambda x: left + (x - x_low) / (x_high - x_low) * (right - left)  # noqa: E731
    py = lambda y: bottom - (min(max(y, y_low), y_high) - y_low) / (y_high - y_low) * (bottom - top)  # noqa: E731
    centred_text(draw, (WIDTH / 2, top / 2), title, fitting_font(draw, title, WIDTH - 8), "black")
    centred_text(draw, ((left + right) / 2, HEIGHT - 18), x_label, font, "black")
    for y in _log_ticks(y_low, y_high) if log_y else _ticks(y_low, y_high):
        draw.line((left, py(y), right, py(y)), fill=GRID_COLOUR, width=2)
        label = f"1e{int(y)}" if log_y else f"{y:g}"
        centred_text(draw, (left - 44, py(y)), label, font, "black")
    for x in _ticks(x_low, x_high):
        x = round(x)
        draw.line((px(x), bottom, px(x), bottom + 8), fill="black", width=2)
        centred_text(draw, (px(x), bottom + 22), str(x), font, "black")
    draw.rectangle((left, top, right, bottom), outline="black", width=2)
    for _, colour, xs, ys in series:
        # A value a log axis cannot show (0: below float64's range) is drawn on the bottom edge.
        points = [(px(x), py(y_of(y)) if y > 0 or not log_y else bottom) for x, y in zip(xs, ys) if math.isfinite(y)]
        draw.line(points, fill=colour, width=4)
        for x, y in points if len(points) < 40 else ():  # dots where there are few points (28 rows)
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=colour)
    x = 8
    for name, colour, _, _ in series if len(series) > 1 else ():  # the legend, left of the x label
        draw.line((x, HEIGHT - 18, x + 32, HEIGHT - 18), fill=colour, width=4)
        width = draw.textlength(name, font=font)
        centred_text(draw, (x + 40 + width / 2, HEIGHT - 18), name, font, "black")
        x += 40 + width + 24
    return pil_to_tensor(image)


def _log_ticks(low: float, high: float) -> list[float]:
    stride = max(1, math.ceil((high - low) / 8))
    return [float(d) for d in range(int(low), int(high) + 1, stride)]


MAX_COLUMNS = 196  # a gate heat map is at most this many pixels wide: 784 steps are averaged in fours
UNIT_PIXELS = 112  # the height of a heat map, shared among the hidden units
GATE_LOW, GATE_HIGH = torch.tensor((20.0, 20.0, 60.0)), torch.tensor((255.0, 220.0, 40.0))  # a gate at 0 (closed) and at 1 (open)
DIGIT_COLUMN = 104  # the digit (84 px) and its caption "7, says 7" (92 px)
GAP = 8


def gates_image(images, labels, answers, gates: list[dict[str, torch.Tensor]], sequence: str) -> torch.Tensor:
    """A row per digit (and direction): the digit, then a heat map per gate (units down, steps across).

    One row of maps per direction keeps the picture 3 maps wide (716 px for an LSTM) when bidirectional."""
    font = text_font()
    directions = len(gates)
    names = list(gates[0])
    steps, hidden = gates[0][names[0]].shape[1:]
    step_px = max(1, MAX_COLUMNS // steps)
    columns = min(steps, MAX_COLUMNS)
    unit_px = max(1, UNIT_PIXELS // hidden)
    map_w, map_h = columns * step_px, hidden * unit_px
    digit = 28 * DIGIT_SCALE
    row_h = LINE_HEIGHT + max(map_h, digit + CAPTION_HEIGHT) + GAP
    width = DIGIT_COLUMN + len(names) * (map_w + GAP)
    canvas = Image.new("RGB", (width, 2 * LINE_HEIGHT + GAP + row_h * len(labels) * directions), "white")
    draw = ImageDraw.Draw(canvas)
    across = "rows" if sequence == "rows" else f"pixels, {math.ceil(steps / columns)} per column" if steps > columns else "pixels"
    for line, text in enumerate((f"layer-0 gates: hidden units down, steps ({across}) across",
                                 "dark: 0 (closed), yellow: 1 (open)")):  # fmt: skip
        centred_text(draw, (width / 2, (line + 0.5) * LINE_HEIGHT), text, fitting_font(draw, text, width - 8), "black")
    for row, (image, label, answer) in enumerate(zip(images, labels.tolist(), answers.tolist())):
        y = 2 * LINE_HEIGHT + GAP + row * directions * row_h
        canvas.paste(digit_picture(image, digit), ((DIGIT_COLUMN - GAP - digit) // 2, y + LINE_HEIGHT))
        centred_text(draw, ((DIGIT_COLUMN - GAP) / 2, y + LINE_HEIGHT + digit + CAPTION_HEIGHT / 2), f"{label}, says {answer}",
                     font, "black")  # fmt: skip
        for direction, (index, name) in itertools.product(range(directions), enumerate(names)):
            x, top = DIGIT_COLUMN + index * (map_w + GAP), y + direction * row_h
            values = gates[direction][name][row].float().T.cpu()  # (hidden, steps)
            if steps > columns:  # average neighbouring steps down to the width
                values = torch.nn.functional.adaptive_avg_pool1d(values[None], columns)[0]
            heat = _heat(values).resize((map_w, map_h), Image.Resampling.NEAREST)
            canvas.paste(heat, (x, top + LINE_HEIGHT))
            arrow = "" if directions == 1 else (" (forward)" if direction == 0 else " (backward)")
            centred_text(draw, (x + map_w / 2, top + LINE_HEIGHT / 2), name + arrow, fitting_font(draw, name + arrow, map_w), "black")
    return pil_to_tensor(canvas)


def _heat(values: torch.Tensor) -> Image.Image:
    """(rows, columns) in [0, 1] -> an RGB image blended from GATE_LOW to GATE_HIGH."""
    rgb = GATE_LOW + (GATE_HIGH - GATE_LOW) * values.clamp(0, 1)[..., None]
    return Image.fromarray(rgb.round().to(torch.uint8).numpy())
