"""The measurements of docs/model-card.md, on the official test set: `python -m benchmarks.model_card [--ckpt_path CKPT]`.

Per-class accuracy, the confusion matrix's worst pairs, and what the model is bad at: digits moved
off centre, thinned strokes, and inputs that are no digit at all (how sure it is of them).
Runs the model as `mnist_rnn.load_model` gives it (float32, normalization inside).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import mnist_rnn
from mnist_rnn.data.mnist_files import load_split

BATCH = 1000


def logits_of(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(chunk) for chunk in pixels.split(BATCH)])


def shifted(pixels: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """The images moved by (down, right) pixels, black coming in at the edges (no wrap-around)."""
    side = pixels.shape[-1]
    padded = F.pad(pixels, (max(right, 0), max(-right, 0), max(down, 0), max(-down, 0)))
    top, left = max(-down, 0), max(-right, 0)
    return padded[:, top : top + side, left : left + side]


def eroded(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Grey-level erosion (a min filter of size x size): every stroke loses about size - 1 pixels of width."""
    inverted = -pixels.float()[:, None]
    padded = F.pad(inverted, ((size - 1) // 2, size // 2, (size - 1) // 2, size // 2), value=-255.0)
    return (-F.max_pool2d(padded, size, stride=1))[:, 0].round().to(torch.uint8)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_card", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", default=None, help="a checkpoint of your own (default: the bundled model)")
    args = parser.parse_args(argv)
    model = mnist_rnn.load_model(args.ckpt_path)
    images, labels = load_split("test")
    predictions = logits_of(model, images).argmax(dim=1)
    print(f"test accuracy: {(predictions == labels).float().mean():.4f} ({int((predictions == labels).sum())}/{len(labels)})")

    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    print("per class: " + ", ".join(f"{k} {confusion[k, k] / confusion[k].sum():.4f} ({confusion[k].sum() - confusion[k, k]} wrong)"
                                     for k in range(10)))  # fmt: skip
    off = confusion.clone().fill_diagonal_(0)
    worst = sorted(((int(off[t, p]), t, p) for t in range(10) for p in range(10) if off[t, p]), reverse=True)[:6]
    print("worst pairs (true -> predicted: count): " + ", ".join(f"{t} -> {p}: {n}" for n, t, p in worst))

    def accuracy(pixels: torch.Tensor) -> float:
        return float((logits_of(model, pixels).argmax(dim=1) == labels).float().mean())

    for step in (2, 3, 4, 6):
        moves = {"right": (0, step), "left": (0, -step), "down": (step, 0), "up": (-step, 0)}
        print(f"shifted {step} px: " + ", ".join(f"{name} {accuracy(shifted(images, *m)):.4f}" for name, m in moves.items()))
    for size in (2, 3):
        thin = eroded(images, size)
        ink = float((thin > 127).sum()) / float((images > 127).sum())
        print(f"eroded {size}x{size} (ink pixels kept {ink:.2f}): {accuracy(thin):.4f}")

    generator = torch.Generator().manual_seed(0)
    others = {
        "uniform noise 0..255": torch.randint(0, 256, (1000, 28, 28), generator=generator, dtype=torch.uint8),
        "sparse noise (5% white pixels)": (torch.rand(1000, 28, 28, generator=generator) < 0.05).to(torch.uint8) * 255,
        "blank (all black)": torch.zeros(1, 28, 28, dtype=torch.uint8),
        "all white": torch.full((1, 28, 28), 255, dtype=torch.uint8),
    }
    for name, pixels in others.items():
        probs = logits_of(model, pixels).softmax(dim=1)
        top, which = probs.max(dim=1)
        common = torch.bincount(which, minlength=10).argmax()
        print(f"{name}: max softmax median {top.median():.3f}, above 0.9 for {float((top > 0.9).float().mean()):.0%},"
              f" most often called {int(common)}")  # fmt: skip
    digits_top = logits_of(model, images).softmax(dim=1).max(dim=1).values
    sure = float((digits_top > 0.9).float().mean())
    print(f"for comparison, test digits: max softmax median {digits_top.median():.3f}, above 0.9 for {sure:.0%}")


if __name__ == "__main__":
    main()
