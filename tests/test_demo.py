"""`make demo`'s code path, small: simulate, train, one DAG run and the summary, twice (the second reuses)."""
from __future__ import annotations

import pytest

from scoring.demo import run_demo

pytestmark = [pytest.mark.azurite, pytest.mark.airflow]


def test_demo_scores_the_latest_hour_and_reuses_what_exists_on_a_second_run(blob, containers, airflow_db, capsys):
    first = run_demo(devices=3, tags=2, hours=4, sensors_per_shard=4)
    out = capsys.readouterr().out
    assert first["dag_run_state"] == "success"
    assert first["sensors_scored"] == 6 and first["windows_scored"] == 360 and first["windows_read"] == 360
    assert first["quarantined"] == 0 and "anomalies found" in out and "Trained 6 model(s)" in out
    assert first["labelled_anomalies_flagged"] <= first["labelled_anomalies"]
    second = run_demo(devices=3, tags=2, hours=4, sensors_per_shard=4)
    out = capsys.readouterr().out
    assert "Using model version" in out
    # only the live current hour again (two if the clock passed an hour between the runs)
    assert "Simulated 1 hour(s)" in out or "Simulated 2 hour(s)" in out
    assert second["windows_scored"] == 360 and second["model_version"] == first["model_version"]
