"""The one exception type the CLI turns into a one-line message instead of a stack trace."""


class MnistRnnError(Exception):
    """A problem the user can fix: the message names the culprit and the fix."""


class DatasetError(MnistRnnError):
    """A dataset file is missing, truncated, altered or not in MNIST's IDX format."""


class ConfigError(MnistRnnError, ValueError):
    """A setting is out of range; raised before any training starts."""
