"""Exceptions for bad user input. The CLI turns these into exit code 2 and one line on stderr."""


class InputError(ValueError):
    """Bad input from the user: a file, a config value or an argument. The message names it."""


class DatasetError(InputError):
    """A dataset file (JSON, image, panoptic PNG) is missing or inconsistent."""


class ConfigError(InputError):
    """A configuration key is unknown or its value is invalid."""


class TrainingDiverged(InputError):
    """Training met more non-finite (NaN / Inf) steps than ``train.max_bad_steps`` allows; the
    message names the iteration, the loss terms and the checkpoint left behind. A bad-input
    error (exit code 2): its usual causes are the config (learning rate) or the data."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint at an iteration boundary.

    ``signum``: the signal; ``iteration``: the iteration saved; ``checkpoint``: its path.
    The CLI exits with ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int, iteration: int, checkpoint):
        import signal

        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(f"{signal.Signals(signum).name} at iteration {iteration}: checkpoint "
                         f"saved to {checkpoint}; continue with --resume")
