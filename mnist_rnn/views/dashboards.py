"""`TensorBoardDashboards`, and the drawing both it and recurrence_views.py use.

Pictures are drawn with Pillow, already a dependency, not matplotlib: a 10x10 table of counts and
a few dozen digits take milliseconds. Drawing functions return what `SummaryWriter.add_image`
takes, a (3, H, W) uint8 tensor."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw, ImageFont
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from mnist_rnn.errors import ConfigError
from mnist_rnn.model.network import NUM_CLASSES


class TensorBoardDashboards(Callback):
    """What TensorBoard shows beyond the scalars: the HPARAMS table and two pictures per validation epoch.

    HPARAMS: the model's and the data's settings against `val/acc_best`, so runs compare in one
    table. IMAGES `val/confusion_matrix` (true class against predicted) and `val/misclassified`
    (validation digits the model got wrong, captioned "true->pred"). Nothing without a TensorBoardLogger."""

    def __init__(self, max_misclassified: int = 48, metric: str = "val/acc_best") -> None:
        """
        Args:
            max_misclassified: How many misclassified validation digits the grid shows (the first ones met).
            metric: The logged scalar the HPARAMS tab reports for each run.
        """
        super().__init__()
        if max_misclassified < 1:
            raise ConfigError(f"TensorBoardDashboards max_misclassified must be at least 1, got {max_misclassified}")
        self.max_misclassified = max_misclassified
        self.metric = metric
        self.confusion = MulticlassConfusionMatrix(NUM_CLASSES)
        self._wrong: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (images, labels, preds)
        self._hparams_logged = False

    def _active(self, trainer: L.Trainer) -> bool:
        return tensorboard_logger(trainer) is not None and not trainer.sanity_checking

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._hparams_logged = False  # before a resumed run's checkpoint says otherwise (load_state_dict)

    def state_dict(self) -> dict[str, Any]:
        # Once per run, not per process: a run resumed after its first validation has its entry.
        return {"hparams_logged": self._hparams_logged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._hparams_logged = bool(state_dict.get("hparams_logged", False))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # HPARAMS, once per run, at its first validation, at the step the metric was logged: the
        # value repeats a point of its curve (TensorBoard shows the curve's latest). Lightning's own
        # call at fit start logs nothing here: the logger has default_hp_metric false.
        logger = tensorboard_logger(trainer)
        value = trainer.callback_metrics.get(self.metric)
        if logger is None or trainer.sanity_checking or self._hparams_logged or value is None:
            return
        self._hparams_logged = True
        data = trainer.datamodule.hparams_initial if trainer.datamodule is not None else {}
        # Without LightningCLI's bookkeeping entries (_instantiator, _class_path): they are no settings.
        params = {k: v for k, v in {**pl_module.hparams_initial, **data}.items() if not k.startswith("_")}
        logger.log_hyperparams(params, {self.metric: float(value)}, step=val_step(trainer))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        self.confusion = self.confusion.to(pl_module.device)
        self.confusion.reset()
        self._wrong = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not self._active(trainer):
            return
        images, labels = batch
        preds = outputs["preds"]
        self.confusion.update(preds, labels)
        room = self.max_misclassified - sum(len(kept_labels) for _, kept_labels, _ in self._wrong)
        if room <= 0:  # the grid is full: no more nonzero() (a device sync on a GPU) for the rest of the epoch
            return
        wrong = (preds != labels).nonzero().flatten()[:room]
        if len(wrong):
            self._wrong.append((images[wrong].cpu(), labels[wrong].cpu(), preds[wrong].cpu()))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        matrix = self.confusion.compute()  # every rank takes part: it syncs across devices
        experiment = tensorboard_logger(trainer).experiment
        step = val_step(trainer)
        experiment.add_image("val/confusion_matrix", confusion_matrix_image(matrix), step)
        if self._wrong:
            images, labels, preds = (torch.cat(parts) for parts in zip(*self._wrong))
            captions = [f"{int(t)}->{int(p)}" for t, p in zip(labels, preds)]
            grid = digit_grid(images, captions)
        else:
            grid = note_image("no misclassified digits")
        experiment.add_image("val/misclassified", grid, step)
        self._wrong = []


def tensorboard_logger(trainer: L.Trainer) -> Optional[TensorBoardLogger]:
    """None without one: validate, test and predict run without a logger."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def val_step(trainer: L.Trainer) -> int:
    """The step Lightning logs an epoch's val/* scalars at (the last training batch's), for pictures to line up."""
    return max(trainer.global_step - 1, 0)


# The drawing.

CELL = 30  # pixels per confusion-matrix cell: room for a four-digit count
TITLE_HEIGHT = 18
LABEL_SIZE = 18  # the strip that holds the class digits along each axis
CORRECT_COLOUR = (31, 119, 180)  # blue: the diagonal
ERROR_COLOUR = (214, 39, 40)  # red: confusions
DIGIT_SCALE = 2  # 28x28 digits are shown at 56x56
CAPTION_HEIGHT = 14


def text_font(size: int = 11) -> ImageFont.ImageFont:
    # Pillow's bundled font at this size where FreeType is available, its bitmap font elsewhere.
    return ImageFont.load_default(size=size)


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
    left, top = LABEL_SIZE, TITLE_HEIGHT + LABEL_SIZE
    image = Image.new("RGB", (left + classes * CELL + 2, top + classes * CELL + 2), "white")
    draw = ImageDraw.Draw(image)
    font = text_font()
    centred_text(draw, (image.width / 2, TITLE_HEIGHT / 2), "rows: true class, columns: predicted", font, "black")
    for k in range(classes):
        centred_text(draw, (left + (k + 0.5) * CELL, TITLE_HEIGHT + LABEL_SIZE / 2), str(k), font, "black")
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
    image = Image.new("RGB", (240, 30), "black")
    centred_text(ImageDraw.Draw(image), (120, 15), text, text_font(), "white")
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
