"""The exceptions the CLI turns into a short message instead of a stack trace."""


class MnistRnnError(Exception):
    """A problem the user can fix: the message names the culprit and the fix."""


class DatasetError(MnistRnnError):
    """A dataset file is missing, truncated, altered or not in MNIST's IDX format."""


class ConfigError(MnistRnnError, ValueError):
    """A setting is out of range; raised before any training starts."""


class CheckpointError(MnistRnnError):
    """A checkpoint file is missing, damaged, unsafe to load, or does not fit the model or the run."""


class OutputError(MnistRnnError):
    """A run folder or a checkpoint cannot be written."""
