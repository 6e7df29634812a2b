"""Entry points that load but name no usable method: an abstract class and a function."""

from sparsebench.method import SparsityMethod


class NoMasks(SparsityMethod):
    """Forgets ``masks``, the one required hook."""

    description = "abstract (plugin test)"


def not_a_class() -> None:
    """An entry point must name a class."""
