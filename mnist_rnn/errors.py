"""The one exception type the CLI turns into a one-line message instead of a stack trace."""


class MnistRnnError(Exception):
    """A problem the user can fix: the message names the culprit and the fix."""


class DatasetError(MnistRnnError):
    """A dataset file is missing, truncated, altered or not in MNIST's IDX format."""


class ConfigError(MnistRnnError, ValueError):
    """A setting is out of range; raised before any training starts."""


class PredictInputError(MnistRnnError):
    """The images to predict cannot be found or read: an empty folder, a pattern matching nothing, a bad file."""


class SkippedInputsError(PredictInputError):
    """Some images could not be read: the others were predicted, these are missing from the CSV."""


class PredictOutputError(MnistRnnError):
    """The predictions cannot be written where they were asked for; raised before predicting."""
