"""The few exception types a user can see; the CLI turns them into one line and exit code 2."""

from __future__ import annotations


class TunesmithError(Exception):
    """A problem the user can fix. `hint` says how; the CLI prints both on one line."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(TunesmithError):
    """A config file, key or value is wrong. `problems` holds every one found."""

    def __init__(self, message: str, hint: str | None = None, problems: list[str] | None = None):
        super().__init__(message, hint)
        self.problems = problems or [message]


class DataError(TunesmithError):
    """A data file cannot be read or has no usable rows."""


class ModelError(TunesmithError):
    """A model cannot be found, added or loaded."""


class RunError(TunesmithError):
    """A run is missing, incomplete, or cannot be resumed."""


class TrainError(TunesmithError):
    """Training had to stop (non-finite loss, nothing to train on, ...)."""


class LaunchError(TrainError):
    """A multi-process launch cannot run as it asked. Every process finds it alike; the main one says it."""

    every_process = True


class EvalError(TunesmithError):
    """An evaluation cannot be carried out as asked."""


class ExportError(TunesmithError):
    """An export failed or did not verify."""


class ServeError(TunesmithError):
    """The server cannot start as asked."""
