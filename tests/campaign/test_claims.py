"""One trial handed to two workers (SQLite ignores optuna's row lock) is trained by one of them only."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sparsebench.campaign import queue
from sparsebench.campaign.spec import load_campaign
from sparsebench.campaign.worker import (
    CellObjective,
    CellSkipped,
    ClaimLost,
    WorkerOptions,
    WorkerSummary,
    take_one,
)
from sparsebench.env import Env
from tests.campaign import write_campaign


@pytest.fixture()
def handed_twice(tmp_path: Path) -> tuple[str, optuna.Study, optuna.Trial, optuna.Trial]:
    """A trial popped by one worker and, as SQLite allows, the same trial held by a second."""
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(storage=url, study_name="c")
    queue.enqueue(study, queue.Cell("dense", 0))
    first = study.ask()
    return url, study, first, optuna.Trial(study, first._trial_id)


def test_only_the_first_claim_of_a_trial_wins(handed_twice) -> None:  # noqa: ANN001
    url, _, first, second = handed_twice
    assert queue.claim(url, first) is True
    assert queue.claim(url, second) is False
    assert queue.claim("postgresql://u:p@host/db", second) is True  # the row lock holds there


def test_the_second_holder_lets_the_trial_be_at_once(tmp_path: Path, handed_twice) -> None:  # noqa: ANN001
    """Waiting for the owner would idle a core for a whole cell (88 minutes for LeNet-5 Sparse VD)."""
    url, study, first, second = handed_twice
    spec = load_campaign(write_campaign(tmp_path))
    options = WorkerOptions(storage=url, env=Env.resolve(tracking_uri="unused"), progress=False)
    objective = CellObjective(spec, options, WorkerSummary(), set(), {"dense"})
    assert queue.claim(url, first)
    with pytest.raises(ClaimLost):
        objective(second)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    assert "worker" not in study.trials[0].user_attrs  # the second holder never marked it as its own


def test_a_lost_claim_leaves_the_trial_untold_and_the_worker_going(tmp_path: Path) -> None:
    """optuna tells FAIL for any Exception; the owner's trial must stay RUNNING for the owner."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'q.db'}", study_name="c")
    study.enqueue_trial({})

    def claimed_elsewhere(trial: optuna.Trial) -> float:
        raise ClaimLost(f"trial {trial.number} was claimed by another worker first")

    take_one(study, claimed_elsewhere)  # type: ignore[arg-type]
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    study.tell(0, 1.0)  # the owner can still tell it
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_a_worker_whose_trial_was_finished_elsewhere_goes_on(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'q.db'}", study_name="c")
    study.enqueue_trial({})

    def finished_by_another(trial: optuna.Trial) -> float:
        trial.study.tell(trial.number, 1.0)  # what the claiming worker did meanwhile
        raise CellSkipped("finished by the worker that claimed it")

    take_one(study, finished_by_another)  # type: ignore[arg-type]  # no "Cannot tell a COMPLETE trial"
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_skipped_cells_leave_no_optuna_failure_lines() -> None:
    """A worker with --rows skips other rows' queued trials; optuna's "failed with value None" echo
    of each skip was one warning line per trial. A bug's own record (its traceback) still shows."""
    import logging

    from sparsebench.campaign.worker import quiet_trials

    seen: list[str] = []
    catch = logging.Handler()
    catch.emit = lambda rec: seen.append(rec.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("optuna.study._optimize")  # optuna's loggers do not propagate
    logger.addHandler(catch)
    because = "Trial {} failed with parameters: {{}} because of the following error: {}."
    try:
        with quiet_trials():
            for number, error in ((3, CellSkipped("not a row this worker runs")), (4, RuntimeError("bug"))):
                try:
                    raise error
                except Exception:
                    logger.warning(because.format(number, error), exc_info=True)
                logger.warning(f"Trial {number} failed with value None.")
    finally:
        logger.removeHandler(catch)
    assert seen == [because.format(4, "bug")]
