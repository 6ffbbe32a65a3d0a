"""Exceptions for bad user input. The CLI turns these into exit code 2 and one line on stderr."""


class InputError(ValueError):
    """Bad input from the user: a file, a config value or an argument. The message names it."""


class DatasetError(InputError):
    """A dataset file (JSON, image, panoptic PNG) is missing or inconsistent."""


class ConfigError(InputError):
    """A configuration key is unknown or its value is invalid."""
