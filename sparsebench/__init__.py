"""sparsebench: train, tune and compare neural-network sparsification methods on standard tasks."""

from sparsebench.errors import (
    ConfigError,
    DataError,
    MissingDependencyError,
    PluginError,
    SparsebenchError,
    TrainingDivergedError,
    UnknownNameError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "MissingDependencyError",
    "PluginError",
    "SparsebenchError",
    "TrainingDivergedError",
    "UnknownNameError",
    "__version__",
]
