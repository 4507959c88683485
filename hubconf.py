"""torch.hub entry points: `torch.hub.load(REPO_DIR, "mnist_rnn", source="local")`.

Returns the bundled trained model (mnist_rnn/assets/bundled.ckpt) in eval mode: pixels
(batch, 28, 28), uint8 or float in 0..255, white ink on black as in MNIST, in; logits (batch, 10)
out. See docs/model-card.md.
"""

dependencies = ["torch", "torchvision", "lightning", "torchmetrics"]


def mnist_rnn(ckpt_path=None):
    """The bundled model, or the model of a checkpoint written by `mnist-rnn fit` (ckpt_path)."""
    from mnist_rnn import load_model

    return load_model(ckpt_path)
