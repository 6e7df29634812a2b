"""Campaigns: declared rows x seeds, run by any number of workers, each finished cell a committed record.

A campaign spec (``sweeps/campaigns/*.yaml``) names rows, each a task, a method, a fixed configuration
and a list of seeds; a *cell* is one row with one seed. A cell is done when its run record exists in
the campaign's results folder (``<results>/runs/<row>-seed<k>.json``), so committed records are the
campaign's memory and a later session runs only what is missing.

The parts, in the order a campaign meets them:

- ``spec``: the YAML file as pydantic models, checked against the plugins before anything runs;
- ``cells``: cells, their record and model files, and what the results folder holds;
- ``queue``: the optuna study that hands cells to workers (one enqueued trial per missing cell);
- ``worker``: the loop that takes cells until none is left or ``--max-time`` passes, and
  ``--workers N`` processes of it;
- ``durations``: how long a row's cell takes, by its records (the time box and the work left);
- ``status``: done / running / missing per row;
- ``importer``: records into an MLflow store, for people who browse there.
"""
