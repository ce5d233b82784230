"""Evaluation metrics, the promotion policy and the label layout, on tiny frames."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from sensor_scoring.models import evaluation, promotion
from sensor_scoring.storage import LocalStorage, parquet_bytes
from tests.support.helpers import START


def judged(flags: list[bool], truth: list[bool], labelled: bool = True) -> pd.DataFrame:
    return pd.DataFrame({"is_anomaly": flags, "truth": truth, "labelled": [labelled] * len(flags)})


def test_metrics_precision_recall_f1_and_unlabelled():
    m = evaluation.metrics(judged([True, True, False, False], [True, False, True, False]))
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    assert m["flagged_share"] == 0.5 and m["labelled"] == 4 and m["anomalous"] == 2
    nothing = evaluation.metrics(judged([False, False], [True, False]))
    assert nothing["precision"] == 0.0 and nothing["f1"] == 0.0  # flagging nothing never looks perfect
    unlabelled = evaluation.metrics(judged([True, False], [False, False], labelled=False))
    assert unlabelled["f1"] is None and unlabelled["flagged_share"] == 0.5  # negative: no labels, no F1


def summary(share: float, f1: float | None, prod_f1: float | None) -> dict:
    cand = {"windows": 100, "flagged_share": share, "f1": f1, "labelled": 100}
    prod = None if prod_f1 is None else {"windows": 100, "flagged_share": 0.05, "f1": prod_f1, "labelled": 100}
    return {"candidate_all": cand, "candidate": cand, "production": prod}


def test_policy_promotes_only_when_it_holds():
    policy = promotion.Policy(max_f1_drop=0.02, min_flagged_share=0.01, max_flagged_share=0.1)
    assert promotion.decide(summary(0.05, 0.80, 0.81), policy) == (True, [])
    assert promotion.decide(summary(0.05, None, None), policy) == (True, [])  # unlabelled: the share alone
    ok, why = promotion.decide(summary(0.05, 0.70, 0.81), policy)
    assert not ok and "F1 0.700" in why[0] and "production's 0.810" in why[0]
    ok, why = promotion.decide(summary(0.30, 0.90, 0.81), policy)
    assert not ok and "above max_flagged_share" in why[0]
    ok, why = promotion.decide(summary(0.0, 0.0, 0.81), policy)
    assert not ok and len(why) == 2  # below the share floor and worse F1
    blind = summary(0.01, 0.0, None)
    blind["candidate_all"] |= {"anomalous": 14, "recall": 0.0}
    ok, why = promotion.decide(blind, policy)
    assert not ok and why == ["it finds none of the 14 labelled anomalous held-back windows"]
    empty = {"candidate_all": {"windows": 0, "flagged_share": 0.0, "f1": None}, "production": None}
    assert promotion.decide(empty, policy)[0] is False


def test_labels_layout_marks_hours_labelled_and_refuses_bad_files(tmp_path):
    storage = LocalStorage(tmp_path)
    hour = START
    rows = pd.DataFrame(
        {
            "device_id": ["d"],
            "tag": ["t"],
            "window_end": [pd.Timestamp(hour) + pd.Timedelta(minutes=5)],
            "anomaly": ["spike"],
        }
    )
    storage.write_bytes("labels", evaluation.label_path(hour), parquet_bytes(rows))
    storage.write_bytes("labels", evaluation.label_path(hour + timedelta(hours=1)), parquet_bytes(rows.iloc[:0]))
    labels, hours = evaluation.read_labels(storage, "labels", hour, hour + timedelta(hours=3))
    assert hours == [hour.isoformat(), (hour + timedelta(hours=1)).isoformat()]  # the third hour has no file
    assert len(labels) == 1
    storage.write_bytes("labels", evaluation.label_path(hour), parquet_bytes(rows.drop(columns="anomaly")))
    with pytest.raises(ValueError, match="lacks column"):
        evaluation.read_labels(storage, "labels", hour, hour + timedelta(hours=1))


@pytest.mark.parametrize("name", ["../versions/v1", "v1/", "..", "v1\n"])
def test_registering_or_rolling_back_to_a_path_is_refused(tmp_path, name):
    from sensor_scoring.contracts import InvalidName
    from sensor_scoring.models import registry

    storage = LocalStorage(str(tmp_path))
    with pytest.raises(InvalidName, match="is not a name"):
        registry.register(storage, "models", [], version=name, params={}, promote=False)
    with pytest.raises(InvalidName, match="is not a name"):
        promotion.rollback(storage, "models", name, by="test")
    assert not list(tmp_path.rglob("*"))  # nothing written


@pytest.mark.parametrize("run_type", ["scheduled", "manual", "backfill", "asset_triggered"])
def test_only_a_scheduled_week_without_data_skips(run_type):
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSkipException

    from sensor_scoring.steps.training import NoTrainingData
    from sensor_scoring_airflow.training import scheduled_runs_skip_when_nothing_landed

    context = {"dag_run": SimpleNamespace(run_type=run_type)}
    expected = AirflowSkipException if run_type == "scheduled" else NoTrainingData
    with pytest.raises(expected, match="no valid window"):
        with scheduled_runs_skip_when_nothing_landed(context):
            raise NoTrainingData("no valid window to train on in [a, b)")
    with scheduled_runs_skip_when_nothing_landed(context):  # other errors and success pass through untouched
        pass
    with pytest.raises(ValueError, match="other"), scheduled_runs_skip_when_nothing_landed(context):
        raise ValueError("other")


def test_the_gate_judges_the_calibrated_false_alarm_rate_and_coverage():
    """Measured on labelled normal held-back windows (else all of them) against the rate the version was calibrated
    to, within three binomial errors; and a version that drops production's sensors is refused whatever it scores."""
    policy = promotion.Policy(false_alarm_rate=0.02, max_flagged_share=0.5)
    fine = summary(0.03, None, None)
    fine["candidate_all"] |= {"labelled": 1000, "anomalous": 0, "normal_flagged_share": 0.03}
    assert promotion.decide(fine, policy) == (True, [])  # 3% on 1000 normal windows: within 2% + 3 x 0.44%
    noisy = summary(0.05, None, None)
    noisy["candidate_all"] |= {"labelled": 1000, "anomalous": 0, "normal_flagged_share": 0.05}
    ok, why = promotion.decide(noisy, policy)
    assert (
        not ok and "above its calibrated false-alarm rate 2.0%" in why[0] and "1000 held-back labelled normal" in why[0]
    )
    unlabelled = summary(0.05, None, None)
    unlabelled["candidate_all"] |= {"windows": 100}
    assert promotion.decide(unlabelled, policy)[0] is True  # 5% of 100 is within 2% + 3 x 1.4%

    dropped = promotion.coverage([("d1", "t")], "context-v1", [("d1", "t"), ("d2", "t")], "v1", "window-v1")
    assert dropped["uncovered"] == 1 and dropped["uncovered_sensors"] == ["d2/t"]
    ok, why = promotion.decide({**summary(0.05, None, None), "coverage": dropped}, promotion.Policy())
    assert not ok and why[0].startswith("it has no model for 1 of the 2 sensors production (v1) scores (d2/t)")
    carried = promotion.coverage([("d1", "t")], "context-v1", [("d1", "t"), ("d2", "t")], "v1", "context-v1")
    assert carried["carried"] == 1 and carried["carried_from"] == "v1" and carried["uncovered"] == 0
    assert promotion.decide({**summary(0.05, None, None), "coverage": carried}, promotion.Policy()) == (True, [])


def test_train_takes_each_sensors_own_nu_unless_told_not_to():
    """``train`` follows the package's default (chosen by leave-one-source-out, docs/models.md) unless
    ``--no-adaptive-nu`` or ``--adaptive-nu`` says otherwise."""
    from sensor_scoring import cli
    from sensor_scoring.models import fitting

    argv = ["train", "--start", "2026-11-24T00:00Z", "--end", "2026-11-25T00:00Z"]
    parser = cli.build_parser()
    assert fitting.DEFAULT_ADAPTIVE_NU is True
    assert cli._adaptive_nu(parser.parse_args(argv)) is True
    assert cli._adaptive_nu(parser.parse_args([*argv, "--no-adaptive-nu"])) is False
    assert cli._adaptive_nu(parser.parse_args([*argv, "--adaptive-nu"])) is True
