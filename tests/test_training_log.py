"""Each training log record reaches the user once (safeft's log line), not twice (plus Trainer's printed dict)."""

from __future__ import annotations

from _methods_support import tiny, trainer
from safeft.stages.training import _log_each_record_once


def test_trainer_prints_its_log_dicts_and_safeft_stops_that(tmp_path, capsys):
    plain = trainer("sft", tiny(), tmp_path / "a")
    plain.train()
    assert "'loss'" in capsys.readouterr().out  # Trainer's own copy of each record (what is removed)

    quiet = trainer("sft", tiny(), tmp_path / "b")
    _log_each_record_once(quiet)
    quiet.train()

    assert "'loss'" not in capsys.readouterr().out
    assert [h for h in quiet.state.log_history if "loss" in h]  # the records themselves are kept
