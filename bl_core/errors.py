"""Errors for bad user input. The CLI prints these as one line and exits 2;
anything else is a bug and keeps its traceback."""


class BLError(ValueError):
    """Base class for errors caused by user input."""


class ConfigError(BLError):
    """A configuration value is invalid; the message names the field and the value."""


class InputError(BLError):
    """A file, directory, checkpoint or data set given by the user is missing or unusable;
    the message names it."""
