"""A fit checkpointed mid-run and resumed ends with exactly the metrics of the uninterrupted fit.

In-process, through the trainer's API (`fit(checkpoint=, resume=)`), for every registered method,
both stages: the checkpoint is saved to disk as a trial saves it (train_state.pt loaded with
`weights_only=True`, train_state.json), the first fit is stopped right after it (as a kill would
stop it), and a fresh fit resumes from the files. Steps re-run after the checkpoint: none.
"""

from __future__ import annotations

import pytest

import search_spaces
from harness.config import TrainConfig
from harness.methods import list_methods
from harness.trainer import fit, load_train_state, save_train_state


class Killed(Exception):
    pass


def _config(model: str, stage: str) -> TrainConfig:
    return TrainConfig(dataset="synthetic", model=model, stage=stage, epochs=2, reports_per_epoch=2,
                       num_threads=1, **search_spaces.load(model).config_defaults())


def _steps(model: str, stage: str) -> list[int]:
    seen: list[int] = []
    fit(_config(model, stage), checkpoint=lambda epoch, step, state: seen.append(step))
    return seen


def _fit_killed_at(config, kill_at: int, folder) -> None:
    """A fit that saves its state after step `kill_at` and dies there, as a killed worker would."""
    def checkpoint_then_die(epoch, step, state):
        if step == kill_at:
            save_train_state(state(), folder)
            raise Killed

    with pytest.raises(Killed):
        fit(config, checkpoint=checkpoint_then_die)


@pytest.mark.parametrize("stage", ["search", "final"])
@pytest.mark.parametrize("model", list_methods())
def test_killed_and_resumed_fit_ends_with_the_uninterrupted_metrics(model, stage, tmp_path):
    config = _config(model, stage)
    reports_whole: list[dict] = []
    whole = fit(config, reporter=reports_whole.append)
    steps = _steps(model, stage)
    kill_at = steps[len(steps) // 2 + 1]  # mid-epoch or just after a report, past the first epoch's start
    _fit_killed_at(config, kill_at, tmp_path)

    ran: list[int] = []
    reports_resumed: list[dict] = []
    resumed = fit(config, reporter=reports_resumed.append, resume=load_train_state(tmp_path),
                  checkpoint=lambda epoch, step, state: ran.append(step))
    assert ran == [s for s in steps if s > kill_at], "the resumed fit re-ran steps before its checkpoint"
    assert resumed.metrics == whole.metrics
    assert resumed.history == whole.history
    assert reports_resumed == [r for r in reports_whole if r["step"] > kill_at]


def test_a_checkpoint_at_an_epoch_end_resumes_at_the_next_epoch(tmp_path):
    config = _config("dazle", "search")
    whole = fit(config)
    steps = _steps("dazle", "search")
    end_of_first = steps[len(steps) // 2 - 1]
    _fit_killed_at(config, end_of_first, tmp_path)
    state = load_train_state(tmp_path)
    assert state.epoch == 1 and state.global_step == end_of_first
    assert fit(config, resume=state).metrics == whole.metrics


def test_an_older_checkpoint_folder_holds_no_train_state(tmp_path):
    assert load_train_state(tmp_path) is None
