"""The warnings that say nothing about a run of this project, each with its reason, in one place.

`ignore_known_warnings` is called when a Lightning command runs (`cli.cli_main`), never at import: importing a
module of this package leaves the importer's warning filters as they were (tests/test_warning_filters.py).
"""

from __future__ import annotations

import warnings

KNOWN = (
    # A deprecation inside Lightning itself, not in this project.
    r".*isinstance\(treespec, LeafSpec\).*",
    # A fit that ends before its first validation: progress.fit_report says so in its own line.
    r".*ModelCheckpoint\(monitor=.*could not find the monitored key.*",
    # RecurrentClassifier.on_before_batch_transfer is meant to run with the datamodule (which has no such hook):
    # Lightning says so on every fit.
    r".*overridden `on_before_batch_transfer` in `LightningModule` but have passed.*",
    # The dataset is in memory: worker processes would only copy it, so Lightning's advice to add some does not apply.
    r".*does not have many workers.*",
    # Lightning's warning that a mid-epoch resume starts its epoch over: the data module saves the position
    # (data.batches.ResumableLoader).
    r".*ended before the epoch ended and your dataloader is not resumable.*",
    # Evaluating a checkpoint outside its run folder: ModelCheckpoint has nothing to resume there.
    r".*The dirpath has changed from.*",
    # A resumed run writes into its own, non-empty checkpoints folder; a new run always gets an empty one.
    r".*Checkpoint directory .* exists and is not empty.*",
    # Lightning's model summary cannot size bf16 weights; the parameter count it shows is right.
    r".*is not supported by the model summary.*",
)


def ignore_known_warnings() -> None:
    """Silence the KNOWN warnings in this process, for the command it runs."""
    for message in KNOWN:
        warnings.filterwarnings("ignore", message=message)
