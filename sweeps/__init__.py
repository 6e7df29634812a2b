"""The shipped sweep specs (YAML package data), addressable by name: ``sparsebench sweep NAME``.

A regular package (not a bare data folder) so that ``importlib.resources`` finds the specs in an
editable install as well as in a wheel; ``sparsebench.sweep.shipped`` reads them.
"""
