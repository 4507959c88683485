"""The network: an LSTM or GRU reads an image as a sequence, a linear head reads its final state.

A plain `nn.Module`, free of training concerns, so it can be used, exported or inspected on its own.
It holds the permutation of sequence=permuted as a buffer, so the weights alone say how to read an image.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from jsonargparse.typing import PositiveInt
from torch import nn

from mnist_rnn.run.ranges import DropoutRate

NUM_CLASSES = 10
IMAGE_SIDE = 28


def pixel_permutation(seed: int) -> torch.Tensor:
    """The fixed pixel order of permuted sequential MNIST, drawn reproducibly from seed."""
    return torch.randperm(IMAGE_SIDE * IMAGE_SIDE, generator=torch.Generator().manual_seed(seed))


class RecurrentNet(nn.Module):
    """`nn.LSTM` (or `nn.GRU`) over an image read as a sequence, then `nn.Linear` on the final state."""

    def __init__(
        self,
        hidden_size: PositiveInt = 128,
        num_layers: PositiveInt = 1,
        dropout: DropoutRate = 0.0,
        bidirectional: bool = False,
        cell: Literal["lstm", "gru"] = "lstm",
        sequence: Literal["rows", "pixels", "permuted"] = "rows",
        permutation_seed: int = 0,
        forget_bias: float = 1.0,
        recurrent_init: Literal["default", "orthogonal", "identity"] = "default",
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        self.sequence = sequence
        rnn_class = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            input_size=IMAGE_SIDE if sequence == "rows" else 1,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
            batch_first=True,
        )
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), NUM_CLASSES)
        with torch.no_grad():
            for name, param in self.rnn.named_parameters():
                if name.startswith("weight_hh") and recurrent_init != "default":
                    for block in param.split(hidden_size):  # one (hidden x hidden) block per gate
                        if recurrent_init == "orthogonal":
                            nn.init.orthogonal_(block)
                        else:
                            block.copy_(torch.eye(hidden_size))
                if name.startswith("bias") and cell == "lstm":
                    # PyTorch packs the gates as (input, forget, cell, output) and adds two bias
                    # vectors, so the forget gate's effective bias is the sum of both slices.
                    param[hidden_size : 2 * hidden_size].fill_(forget_bias / 2)
        if sequence == "permuted":
            # A buffer: saved with the weights it was trained with.
            self.register_buffer("permutation", pixel_permutation(permutation_seed))

    def to_sequence(self, images: torch.Tensor) -> torch.Tensor:
        """(batch, 28, 28) images -> (batch, steps, features) sequences as configured."""
        if self.sequence == "rows":
            return images
        # flatten, not reshape(len(images), ...): len() would fix the batch size in an exported graph
        pixels = images.flatten(1).unsqueeze(-1)
        if self.sequence == "permuted":
            pixels = pixels[:, self.permutation]
        return pixels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (batch, 10) for normalized images (batch, 28, 28)."""
        return self.head(self.features(images))

    def features(self, images: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        """What the head reads (batch, hidden x directions): the top layer's final state.

        With `steps`, the state of a network that has read only the first `steps` steps (a
        bidirectional network's backward pass then starts at step `steps`).
        """
        sequence = self.to_sequence(images)
        if steps is not None:
            sequence = sequence[:, :steps]
        _, h_n = self.rnn(sequence)
        if isinstance(h_n, tuple):  # an LSTM returns (h_n, c_n)
            h_n = h_n[0]
        # h_n is (layers * directions, batch, hidden). The last layer's forward state is at the
        # final row; its backward state finished at row 0, which output[:, -1] would miss.
        if self.bidirectional:
            return torch.cat([h_n[-2], h_n[-1]], dim=1)
        return h_n[-1]

    def per_step_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (batch, steps, 10) of the head applied to the top layer's output after every time step.

        Reading in one direction, step t is the answer had the sequence stopped there (after row t+1
        with sequence=rows), and the last step is forward()'s. Bidirectional, step t also holds the
        backward pass over steps t..end: its per-step logits are not a running answer.
        """
        output, _ = self.rnn(self.to_sequence(images))
        return self.head(output)
