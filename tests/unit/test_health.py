"""Model health on a directory storage, through the DAG's own steps (plan, read, score, commit, model_health):
a healthy fleet is silent, a shifted sensor is caught within SCORING_DRIFT_HOURS hours, drift hours do not depend on
the order hours are scored or re-scored in, a sensor that lost its model is told apart from one that never had one.

Data: 3 devices x 2 sensors of the simulator without injected anomalies or drift, 30 hours; a day trains (the
baselines follow the day) through the training DAG's steps, the hours after it are scored.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import pandas as pd
import pytest

from sensor_scoring import settings as config
from sensor_scoring.models import promotion, registry
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps import health
from sensor_scoring.steps.training import train_locally
from sensor_scoring.storage import LocalStorage
from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour
from sensor_scoring.windows import LandingPlan, aggregate_readings, land_windows
from tests.support.helpers import START, run_steps
from tests.support.training import training_params

H = timedelta(hours=1)
FIRST = START + 24 * H  # the first scored hour
SCORED = [FIRST + n * H for n in range(4)]  # 30 hours landed: two more for the lost-model test
SHIFTED = ("dev-0001", "temperature")
THRESHOLDS = health.Thresholds(psi=0.0, anomaly_excess=0.2, hours=3)  # the settings' defaults
TRAINING = training_params(holdout_hours=2, sensors_per_shard=10, features="context-v1", false_alarm_rate=None)


def _windows(shift: bool) -> pd.DataFrame:
    cfg = SimulationConfig(devices=3, tags=2, seed=5, anomaly_rate=0.0)
    windows = pd.concat(
        [aggregate_readings(simulate_hour(cfg, START + n * H)[0]) for n in range(30)], ignore_index=True
    )
    if shift:  # after the training day, one sensor reads 30 units higher
        late = (windows["window_end"] > pd.Timestamp(FIRST)) & (windows["device_id"] == SHIFTED[0])
        late &= windows["tag"] == SHIFTED[1]
        for column in ("value_avg", "value_min", "value_max"):
            windows.loc[late, column] += 30.0
    return windows


def _fleet(root, shift: bool) -> Scope:
    """Windows landed, a version trained on the first day and promoted, the scored hours committed."""
    storage, containers = LocalStorage(str(root)), config.Containers()
    land_windows(storage, containers.windows, _windows(shift), LandingPlan(late_share=0.0))
    trained = train_locally(
        Scope(storage, containers, "training", START, FIRST), TRAINING, promotion.Policy(), version="v1"
    )
    assert trained["promoted"], trained["reason"]
    for h in SCORED:
        score_hour(Scope(storage, containers, f"run-{h:%H}", h, h + H))
    return Scope(storage, containers, "health", FIRST, FIRST + len(SCORED) * H)


def score_hour(hour: Scope, model_version: str = "production") -> None:
    run_steps(hour, model_version=model_version)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Scope:
    return _fleet(tmp_path_factory.mktemp("healthy"), shift=False)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Scope:
    return _fleet(tmp_path_factory.mktemp("shifted"), shift=True)


def _rows(hour: Scope, h) -> pd.DataFrame:
    from sensor_scoring import layout
    from sensor_scoring.storage import read_parquet

    return read_parquet(hour.storage, hour.containers.health, layout.Partition(h).data).set_index(["device_id", "tag"])


def _health_in(hour: Scope, order: list) -> list[health.HealthManifest]:
    """Health of the scored hours, one run per hour in ``order`` (as separate DAG runs would); all manifests."""
    out = []
    for h in order:
        out += health.model_health(Scope(hour.storage, hour.containers, f"health-{h:%H}", h, h + H), THRESHOLDS)
    return out


def _drift_hours(hour: Scope) -> dict:
    return {h: _rows(hour, h)["drift_hours"].to_dict() for h in SCORED}


def test_a_healthy_fleet_is_silent(healthy):
    manifests = health.model_health(healthy, THRESHOLDS)
    assert [m.hour for m in manifests] == SCORED
    for m in manifests:
        rows = _rows(healthy, m.hour)
        assert m.sensors == 6 and (rows["status"] == health.STATUS_OK).all()
        assert not rows["drifting"].any(), rows[["anomaly_rate", "train_flagged_share", "psi"]]
        assert m.drifting == 0 and m.alerting == 0 and m.models_lost == 0


def test_psi_zero_is_off_and_a_positive_psi_is_judged(healthy):
    """SCORING_DRIFT_PSI=0 is documented as off: no sensor drifts by PSI at 0, whatever its PSI; a positive one
    is judged (a PSI threshold of 1e-9 marks every sensor with any PSI)."""
    health.model_health(healthy, THRESHOLDS)
    assert not _rows(healthy, FIRST)["drifting"].any()
    tight = health.Thresholds(psi=1e-9, anomaly_excess=0.2, hours=3)
    health.model_health(Scope(healthy.storage, healthy.containers, "tight", FIRST, FIRST + H), tight)
    rows = _rows(healthy, FIRST)
    assert rows.loc[rows["psi"] > 1e-9, "drifting"].all() and rows["drifting"].any()
    health.model_health(healthy, THRESHOLDS)  # back as the other tests expect


def test_a_shifted_sensor_is_caught_within_the_drift_hours(shifted):
    manifests = health.model_health(shifted, THRESHOLDS)
    for number, m in enumerate(manifests):
        rows = _rows(shifted, m.hour)
        assert rows.loc[SHIFTED, "drifting"] and rows.loc[SHIFTED, "drift_hours"] == number + 1
        assert rows.drop(index=[SHIFTED])["drifting"].sum() == 0  # the others stay quiet
        expected = ("/".join(SHIFTED),) if number + 1 >= THRESHOLDS.hours else ()
        assert m.alerting_sensors == expected


def test_drift_hours_do_not_depend_on_the_order_hours_are_scored_in(shifted):
    in_order = _health_in(shifted, SCORED)
    expected = _drift_hours(shifted)
    assert expected[SCORED[-1]][SHIFTED] == len(SCORED)
    alerted = {m.hour for m in in_order if m.alerting}

    for order in (SCORED[::-1], [SCORED[2], SCORED[0], SCORED[3], SCORED[1]]):
        shutil.rmtree(shifted.storage.root / shifted.containers.health)
        manifests = _health_in(shifted, order)
        assert _drift_hours(shifted) == expected, order
        # every hour whose sensors reach SCORING_DRIFT_HOURS is alerted once it does, whatever the order
        assert {m.hour for m in manifests if m.alerting} == alerted

    # a re-scored hour in the middle (its health recomputed) leaves every count as it was
    middle = SCORED[2]
    score_hour(Scope(shifted.storage, shifted.containers, "rerun", middle, middle + H))
    again = _health_in(shifted, [middle])
    assert _drift_hours(shifted) == expected and [m.hour for m in again] == [middle]  # nothing newly alerting


def test_an_hour_whose_sensors_lost_their_model_is_alerted(healthy, tmp_path):
    """A version without dev-0000's models promoted: its windows go no_model, and health says the sensors had a
    model (the hour before, and in the version before), unlike a sensor that never had one."""
    storage, containers = healthy.storage, healthy.containers
    index = registry.read_index(storage, containers.models, "v1")
    loaded, _ = registry.load_models(storage, containers.models, "v1", index)
    from sensor_scoring.models import fitting

    kept = [
        fitting.TrainedModel(d, t, None, loaded[(d, t)], 60, "a", "b", 0.02)
        for d, t in sorted(loaded)
        if d != "dev-0000"
    ]
    registry.register(storage, containers.models, kept, version="v-less", params={}, promote=False)
    promotion.move_alias(storage, containers.models, "v-less", action="promote", reason="test", by="test")
    try:
        h = FIRST + len(SCORED) * H  # the hour after the scored ones, with windows landed
        health.model_health(Scope(storage, containers, "h-before", h - H, h), THRESHOLDS)
        score_hour(Scope(storage, containers, "lost", h, h + H))
        [manifest] = health.model_health(Scope(storage, containers, "h-lost", h, h + H), THRESHOLDS)
        assert manifest.models_lost == 2
        assert manifest.models_lost_sensors == ("dev-0000/pressure", "dev-0000/temperature")
        rows = _rows(healthy, h)
        assert (rows.loc["dev-0000", "status"] == health.STATUS_MODEL_LOST).all()

        # the next hour still says so (the hour before scored nothing for them, but the version before had them)
        score_hour(Scope(storage, containers, "lost-2", h + H, h + 2 * H))
        [later] = health.model_health(Scope(storage, containers, "h-lost-2", h + H, h + 2 * H), THRESHOLDS)
        assert later.models_lost == 2
    finally:
        promotion.rollback(storage, containers.models, by="test")


def test_a_sensor_that_never_had_a_model_is_not_a_lost_model():
    predictions = pd.DataFrame(
        {"device_id": ["d1"] * 20, "tag": ["t"] * 20, "score": [0.5] * 20, "is_anomaly": [False] * 20}
    ).assign(model_version="v-old")
    quarantine = pd.DataFrame({"device_id": ["d2"], "tag": ["t"]})
    rows = health.sensor_health(predictions, quarantine, {"v-old": None}, None, THRESHOLDS)
    assert rows.set_index("device_id").loc["d2", "status"] == health.STATUS_NOT_SCORED
