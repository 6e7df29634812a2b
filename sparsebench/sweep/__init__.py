"""Sweeps: a YAML spec (or a shipped spec's name) becomes an optuna study, run by one or many workers.

The parts, in the order a sweep meets them:

- ``shipped``: the specs installed with the package, by name (``sparsebench sweep --list``).
- ``schema``: the spec file's shape as pydantic models (types, ranges, unknown keys).
- ``spec``: a checked file becomes a frozen ``SweepSpec``; ``checks`` checks it against the plugins.
- ``components``: optuna samplers and pruners by name.
- ``storage`` and ``study``: where the study lives; creating, joining and counting it.
- ``runs``: the MLflow parent run and the trials' runs.
- ``objective``: one trial = one training run per seed.
- ``workers``: the loop that runs trials, and ``--workers N`` processes of it.
- ``status``: where a sweep stands; ``scaling``: trials/hour against the number of workers.
"""
