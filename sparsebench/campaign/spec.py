"""The campaign spec: a YAML file (or a shipped campaign's name) becomes a checked ``CampaignSpec``.

Checked up front with the rules of sweep specs (``sweep.schema``): an unknown key, a value that is not
finite or out of range is one line naming the key; then every row is resolved with the code that
configures a run (task, method, each ``--set`` key and each seed), ``init_from_row`` must name a row of
the same task that has every seed of its child, and ``from_sweep`` must name a sweep spec of the same
task and method. A typo found after the first cell of a campaign has run costs hours; here it costs a
line.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StringConstraints, field_validator, model_validator

from sparsebench.errors import ConfigError, SparsebenchError
from sparsebench.sweep.schema import (
    ConfigValue,
    Count,
    HeartbeatSection,
    Index,
    Number,
    Positive,
    Section,
    Text,
    validate,
)

PACKAGE = "sparsebench.sweeps"
FOLDER = "campaigns"
RESULTS_ROOT = "reports"
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", max_length=100)]
"""Row and campaign names name files (``<row>-seed<k>.json``) and the optuna study."""
AnalysisName = Literal["matched_sparsity", "dropout_width", "gradient_variance"]
"""Extra report sections a campaign may declare; ``sparsebench.report.analyses`` draws each one."""


class PaperNumber(Section):
    """A published number quoted beside the row (never recomputed)."""

    error: Number
    compression: Positive | None = None
    """Weights-only compression |W| / |W != 0|."""
    compression_structured: Positive | None = None
    compression_precision: Positive | None = None
    """Compression with the precision of the kept weights reduced (Bayesian compression's "with bits")."""
    citation: Text
    architecture: str = ""
    """Units kept per layer as the paper prints them (conv: output filters, Linear: input units),
    e.g. ``219-214-100``; the report's architecture table sets it beside ours."""
    note: str = ""
    differences: str = ""
    """How our row's protocol differs from the one behind the quoted number (evaluation, data split,
    a setting the paper does not give), so a reader can weigh the gap between the two; the report
    lists it in its own table."""


class Target(Section):
    """What a row must reach, as 3-seed means, to count as done; the report says met or by how much.

    A target is the campaign's aim, not a quoted number (that is ``paper``): the two may differ (aim
    beyond the paper), and a row may have a target without a paper. ``note`` says what was tried, so a
    target that is not met is a stated gap, not a silent one.
    """

    error: Positive
    """Test error (the task's metric, % on MNIST) the mean must not exceed."""
    compression: Positive | None = None
    """Weights-only compression |W| / |W != 0| the mean must reach."""
    compression_structured: Positive | None = None
    compression_precision: Positive | None = None
    """Compression with the kept weights at reduced precision ("with bits")."""
    note: str = ""


class FromSweep(Section):
    """Where a frozen configuration came from: the sweep whose best trial (on validation) it is."""

    spec: Text
    """The sweep spec (a shipped name or a file) whose study chose the configuration."""
    frozen: Annotated[dict[str, ConfigValue], Field(min_length=1)]
    """The chosen values, copied here once; later sweeps do not change the row."""
    trial: Index | None = None
    trials: Count | None = None
    """Finished trials of the study when the value was chosen: the row's tuning budget, in the report."""
    note: str = ""


class RowFile(Section):
    name: Name
    task: Text
    method: Text
    config: dict[str, ConfigValue] = {}
    """Config overrides, as ``--set`` takes them (``method.kl_weight: 3``)."""
    from_sweep: FromSweep | None = None
    seeds: list[Index] | None = None
    """The row's seeds (default: the campaign's)."""
    init_from_row: Name | None = None
    """Start each seed from the exported model of this row's cell with the same seed."""
    paper: PaperNumber | None = None
    target: Target | None = None
    """What the row aims at (3-seed means); judged from the records in the report."""
    description: str = ""
    labels: dict[str, ConfigValue] = {}
    """Free-form facts an analysis groups rows by (``{width: 500, variant: A2}``, ``{target: 0.95}``)."""

    @field_validator("config")
    @classmethod
    def _no_seed(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "train.seed" in value:
            raise ValueError("train.seed is set by the row's seeds; list them under seeds")
        return value


class CampaignFile(Section):
    """The top level of a campaign file."""

    name: Name
    description: str = ""
    results: Text
    """The results folder, relative to where commands run and under reports/ (e.g. reports/mnist)."""
    seeds: Annotated[list[Index], Field(min_length=1)] = [0, 1, 2]
    rows: Annotated[list[RowFile], Field(min_length=1)]
    storage: Text | None = None
    heartbeat: HeartbeatSection = HeartbeatSection()
    analyses: list[AnalysisName] = []
    """Report sections beyond the rows' table, drawn from the same records (``report --records``)."""

    @field_validator("results")
    @classmethod
    def _under_reports(cls, value: str) -> str:
        path = PurePosixPath(value)
        if (
            path.is_absolute()
            or ".." in path.parts
            or path.parts[:1] != (RESULTS_ROOT,)
            or len(path.parts) < 2
        ):
            raise ValueError(f"must be a folder under {RESULTS_ROOT}/ given relative, e.g. reports/mnist")
        return path.as_posix()

    @model_validator(mode="after")
    def _distinct(self) -> CampaignFile:
        names = [row.name for row in self.rows]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"row names must be distinct; repeated: {', '.join(twice)}")
        for seeds in [self.seeds, *(row.seeds for row in self.rows if row.seeds is not None)]:
            if len(set(seeds)) != len(seeds) or not seeds:
                raise ValueError(f"seeds must be a non-empty list of distinct seeds, got {seeds}")
        return self


class Row:
    """One checked row: what a cell of it trains."""

    def __init__(self, raw: RowFile, seeds: list[int]) -> None:
        self.name, self.task, self.method = raw.name, raw.task, raw.method
        self.seeds = tuple(raw.seeds if raw.seeds is not None else seeds)
        frozen = dict(raw.from_sweep.frozen) if raw.from_sweep else {}
        both = sorted(set(frozen) & set(raw.config))
        if both:
            raise ConfigError(f"rows.{raw.name}: {', '.join(both)} set in both config and from_sweep.frozen")
        self.config: dict[str, Any] = {**raw.config, **frozen}
        self.from_sweep = raw.from_sweep
        self.init_from_row = raw.init_from_row
        self.paper = raw.paper
        self.target = raw.target
        self.description = raw.description
        self.labels = dict(raw.labels)

    def overrides(self, seed: int) -> dict[str, Any]:
        return {**self.config, "train.seed": seed}


class CampaignSpec:
    """A checked campaign: its rows in file order, where results go, and the queue's storage."""

    def __init__(self, raw: CampaignFile, source: str) -> None:
        self.raw, self.source = raw, source
        self.name, self.description = raw.name, raw.description
        self.results = Path(raw.results)
        self.rows = tuple(Row(r, raw.seeds) for r in raw.rows)
        self.storage = raw.storage
        self.heartbeat = raw.heartbeat

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        close = difflib.get_close_matches(name, [r.name for r in self.rows], n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; rows: {', '.join(r.name for r in self.rows)}"
        raise ConfigError(f"campaign {self.name} has no row {name!r}{hint}")

    def select(self, names: list[str] | None) -> tuple[Row, ...]:
        """The rows ``--rows`` names (all of them when it names none), in file order."""
        if not names:
            return self.rows
        wanted = {self.row(n).name for n in names}
        return tuple(r for r in self.rows if r.name in wanted)

    def public_dict(self) -> dict[str, Any]:
        """The spec as data, for the results folder: no storage URL (it may carry a password).

        ``source`` is the spec file's name alone: the copy is committed, and a folder would differ
        between machines and between ``run mnist`` and ``run sweeps/campaigns/mnist.yaml``.
        """
        data = self.raw.model_dump(mode="json", exclude={"storage", "heartbeat"})
        data["source"] = Path(self.source).name.removesuffix(".yaml")
        for row, raw in zip(self.rows, data["rows"], strict=True):
            raw["seeds"] = list(row.seeds)  # resolved: the campaign's seeds where the row has none
        return data


def shipped_names() -> list[str]:
    folder = resources.files(PACKAGE).joinpath(FOLDER)
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve(target: str | Path) -> tuple[str, str]:
    """``(label, text)`` of a campaign given as a file path or a shipped name (a file wins)."""
    path = Path(target)
    if path.is_file():
        return str(target), path.read_text(encoding="utf-8")
    name = str(target).removesuffix(".yaml")
    if len(path.parts) == 1 and name in shipped_names():
        text = resources.files(PACKAGE).joinpath(FOLDER, f"{name}.yaml").read_text(encoding="utf-8")
        return str(target), text
    close = difflib.get_close_matches(path.name.removesuffix(".yaml"), shipped_names(), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    shipped = ", ".join(shipped_names()) or "none"
    raise ConfigError(
        f"campaign spec {target} not found: no such file, nor a shipped campaign; {hint}shipped: {shipped}"
    )


def load_campaign(target: str | Path) -> CampaignSpec:
    """Read and check a campaign; every problem is one ConfigError naming the file and the key."""
    label, text = resolve(target)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{label}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        return campaign_from_dict(data, label)
    except SparsebenchError as exc:
        raise type(exc)(f"{label}: {exc}") from None


def campaign_from_dict(data: Any, source: str = "campaign") -> CampaignSpec:
    if not isinstance(data, dict):
        raise ConfigError("a campaign spec is a YAML mapping with name, results and rows")
    raw = validate(CampaignFile, {k: v for k, v in data.items() if v is not None})
    spec = CampaignSpec(raw, source)
    check_rows(spec)
    return spec


def check_rows(spec: CampaignSpec) -> None:
    """Every row against the plugins and the config code; parents before children, no cycles."""
    from sparsebench.run.plan import plan_run

    for row in spec.rows:
        for seed in row.seeds:
            try:
                plan_run(row.task, row.method, row.overrides(seed))
            except SparsebenchError as exc:
                raise type(exc)(f"rows.{row.name}: {exc}") from None
        if row.from_sweep is not None:
            _check_sweep_origin(row)
    by_name = {row.name: row for row in spec.rows}
    for row in spec.rows:
        if row.init_from_row is None:
            continue
        parent = by_name.get(row.init_from_row)
        if parent is None or parent is row:
            what = "itself" if parent is row else f"no row {row.init_from_row!r}"
            raise ConfigError(f"rows.{row.name}.init_from_row names {what}")
        if parent.task != row.task:
            raise ConfigError(
                f"rows.{row.name}.init_from_row: {parent.name} trains {parent.task}, not {row.task}"
            )
        missing = sorted(set(row.seeds) - set(parent.seeds))
        if missing:
            raise ConfigError(
                f"rows.{row.name}.init_from_row: {parent.name} has no seed {', '.join(map(str, missing))}"
            )
    for row in spec.rows:
        seen, current = {row.name}, row
        while current.init_from_row is not None:
            current = by_name[current.init_from_row]
            if current.name in seen:
                raise ConfigError(f"rows.{row.name}: init_from_row goes round in a cycle")
            seen.add(current.name)


def _check_sweep_origin(row: Row) -> None:
    """The named sweep exists and tuned this task and method (the keys it searched, if it lists them)."""
    from sparsebench.sweep.shipped import not_found_message
    from sparsebench.sweep.shipped import resolve as resolve_sweep

    origin = row.from_sweep
    if origin is None:
        return
    label, text = resolve_sweep(origin.spec)
    if text is None:
        raise ConfigError(f"rows.{row.name}.from_sweep.spec: {not_found_message(origin.spec)}")
    data = yaml.safe_load(text) or {}
    for key in ("task", "method"):
        if re.sub(r"[-_ ]", "", str(data.get(key, ""))).lower() != re.sub(r"[-_ ]", "", getattr(row, key)):
            raise ConfigError(
                f"rows.{row.name}.from_sweep.spec: {label} tunes {data.get('task')} / {data.get('method')}, "
                f"not {row.task} / {row.method}"
            )
    space = data.get("space")
    if isinstance(space, dict):
        stray = sorted(set(origin.frozen) - set(space) - set(data.get("fixed") or {}))
        if stray:
            raise ConfigError(
                f"rows.{row.name}.from_sweep.frozen: {', '.join(stray)} not searched nor fixed by {label}"
            )
