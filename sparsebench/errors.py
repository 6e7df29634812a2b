"""Errors a user can fix. The CLI prints them as one line and exits with code 2.

Anything that is not a ``SparsebenchError`` is a bug and keeps its traceback.
"""


class SparsebenchError(Exception):
    """Base class for every error caused by input the user can change."""


class ConfigError(SparsebenchError):
    """A malformed or unknown configuration value."""


class UnknownNameError(SparsebenchError):
    """A method, task or other registered name that does not exist."""


class PluginError(SparsebenchError):
    """A plugin that cannot be loaded or that clashes with another one."""


class DataError(SparsebenchError):
    """A dataset file that is missing, truncated or of the wrong format."""


class MissingDependencyError(SparsebenchError):
    """An optional dependency that a feature needs is not installed."""


class TrainingDivergedError(SparsebenchError):
    """The loss became NaN or infinite; the run is stopped and its last checkpoint kept."""


class RunNotFoundError(SparsebenchError):
    """A run id (for ``--resume`` or ``--init-from``) that has no run or checkpoint."""
