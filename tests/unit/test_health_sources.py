"""Model health on every clean evaluation source, not only the project's simulator: a healthy fleet stays silent
and a shifted sensor is caught within SCORING_DRIFT_HOURS hours.

Each source of ``bench/detection_sources.py`` without injected anomalies (the sparse source without its setpoints,
as in test_false_alarm_rate.py: a setpoint moved to a value its history never held is a change, not noise), a few of
its sensors, through the product's own path on a directory storage: the windows landed, a version trained with
the training DAG's default params (``train_locally``: held-back hours, calibrated false-alarm rate, feature set,
statistics per hour of day), then later hours scored (plan_shards, read_windows, score_shard, commit) and
judged by model_health with the settings' default thresholds. The scored hours sit away from the training's end (at
a time of day with its own training statistics), so the per-hour-of-day comparison is what judges them. The shifted
case adds a level shift of ``SHIFT_SDS`` training standard deviations of the sensor's window average to one sensor
in the scored hours only.
"""

from __future__ import annotations

import functools
import shutil
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from sensor_scoring import layout, settings as config
from sensor_scoring.models import promotion, stats as model_stats
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps import health
from sensor_scoring.steps.training import train_locally
from sensor_scoring.storage import LocalStorage, read_parquet
from sensor_scoring.windows import LandingPlan, aggregate_readings, land_windows
from tests.support.helpers import run_steps
from tests.support.training import training_params

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import detection_sources as sources  # noqa: E402  (the benchmark's evaluation sources)

H = timedelta(hours=1)
KEY = ["device_id", "tag"]
#: The settings' defaults, as a deployment that sets nothing runs them.
THRESHOLDS = health.Thresholds.from_settings(config.Settings.from_env({}))
#: The training DAG's form defaults (dags/sensor_model_training.py), as ``train`` and the demo pass them.
DEFAULTS = training_params()
#: The level shift of the shifted case, in training standard deviations of the sensor's window average.
SHIFT_SDS = 4.0
#: Hours scored after the training's end (a gap first: the scored hours are at another time of day).
GAP_HOURS = 6
SCORED_HOURS = 3


@dataclass(frozen=True)
class Case:
    """One source's small case: its devices kept, the sensor shifted, and the scored hour by which the shifted
    sensor is alerted (SCORING_DRIFT_HOURS drifting hours)."""

    source: str
    devices: tuple[str, ...]
    shifted: tuple[str, str]
    alerted_by: int = THRESHOLDS.hours
    scored: int = SCORED_HOURS
    #: some sensor had enough training windows at the scored hours' time of day to be judged against those alone
    hour_of_day_reference: bool = True


CASES = {
    "simulator": Case("simulator", ("dev-0000", "dev-0001"), ("dev-0001", "temperature")),
    "shapes": Case("shapes", ("dev-0000", "dev-0001"), ("dev-0001", "s1")),
    "plant": Case("plant", ("plant-00", "plant-01"), ("plant-01", "p1")),
    # field-01/process reports about every 15 minutes, field-02's sensors every 5 to 30, field-00/process hourly
    "sparse": Case("sparse", ("field-00", "field-01", "field-02"), ("field-01", "process")),
    # both field-06 sensors report about hourly (jittered, 5% lost): one window an hour, or none, or two. One
    # window can never be improbable, so the first shifted hour cannot be marked; from the second on, the hour is
    # judged with the hour before (docs/operating.md): alerted an hour later than a denser sensor.
    "sparse-hourly": Case(
        "sparse", ("field-00", "field-06"), ("field-06", "process"), THRESHOLDS.hours + 1, SCORED_HOURS + 2, False
    ),  # 7 windows a time of day in 7 days: judged against the whole range
}


@functools.cache
def clean(source: str) -> tuple[pd.DataFrame, pd.Timestamp]:
    """The case's windows (its devices, no injected anomalies) and the training's end."""
    case = CASES[source]
    if case.source == "sparse":
        src = sources.sparse(anomalies=False, train_days=7, scored_days=1)
        readings = src.readings.loc[src.readings["tag"] != "setpoint"]
    else:
        src = getattr(sources, case.source)(
            anomalies=False, train_hours=24 + DEFAULTS["holdout_hours"], scored_hours=GAP_HOURS + SCORED_HOURS
        )
        readings = src.readings
    readings = readings.loc[readings["device_id"].isin(case.devices)]
    return aggregate_readings(readings).reset_index(drop=True), src.cut


def scored_hours(source: str) -> list:
    cut = clean(source)[1].to_pydatetime()
    return [cut + (GAP_HOURS + n) * H for n in range(CASES[source].scored)]


def _windows(source: str, shift: bool) -> pd.DataFrame:
    windows, cut = clean(source)
    windows = windows.copy()
    start = pd.Timestamp(scored_hours(source)[0])
    windows = windows.loc[(windows["window_end"] <= cut) | (windows["window_end"] > start)].reset_index(drop=True)
    if shift:
        device, tag = CASES[source].shifted
        sensor = (windows["device_id"] == device) & (windows["tag"] == tag)
        sd = windows.loc[sensor & (windows["window_end"] <= cut), "value_avg"].std()
        late = sensor & (windows["window_end"] > start)
        for column in ("value_avg", "value_min", "value_max"):
            windows.loc[late, column] += SHIFT_SDS * sd
    return windows


def score_hour(hour: Scope) -> None:
    run_steps(hour)


@functools.cache
def fleet(source: str, shift: bool, root: str) -> tuple[Scope, list]:
    """Windows landed, a version trained with the defaults on the training range and promoted, the scored hours
    committed and their health computed; the health run and its manifests."""
    storage, containers = LocalStorage(root), config.Containers()
    land_windows(storage, containers.windows, _windows(source, shift), LandingPlan(late_share=0.0))
    windows, cut = clean(source)
    first = windows["window_end"].min().floor("h").to_pydatetime()
    run = Scope(storage, containers, "training", first, cut.to_pydatetime())
    trained = train_locally(run, DEFAULTS, promotion.Policy(), version="v1")
    assert trained["promoted"], trained["reason"]
    hours = scored_hours(source)
    for h in hours:
        score_hour(Scope(storage, containers, f"run-{h:%d%H}", h, h + H))
    whole = Scope(storage, containers, "health", hours[0], hours[-1] + H)
    return whole, health.model_health(whole, THRESHOLDS)


def rows(hour: Scope, h) -> pd.DataFrame:
    return read_parquet(hour.storage, hour.containers.health, layout.Partition(h).data).set_index(KEY)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("sources")


@pytest.mark.parametrize("source", list(CASES))
def test_a_healthy_fleet_of_each_source_is_silent(source, root):
    hour, manifests = fleet(source, False, str(root / f"{source}-clean"))
    assert [m.hour for m in manifests] == scored_hours(source)
    stats = model_stats.read(hour.storage, hour.containers.models, "v1")
    assert stats is not None and stats["false_alarm_rate"].ge(DEFAULTS["false_alarm_rate"]).all()
    for m in manifests:
        r = rows(hour, m.hour)
        assert (r["status"] == health.STATUS_OK).all(), r["status"]
        # judged against training at the same hour of day, where training saw enough windows then
        at = stats["hourly_counts"].map(lambda c, h=m.hour.hour: sum(c[h]) >= model_stats.MIN_HOURLY_WINDOWS)
        assert at.any() == CASES[source].hour_of_day_reference
        assert (r["expected_rate"] >= DEFAULTS["false_alarm_rate"]).all()
        assert not r["drifting"].any(), r[["windows", "anomaly_rate", "expected_rate", "p_value"]]
        assert m.drifting == 0 and m.alerting == 0 and m.models_lost == 0


@pytest.mark.parametrize("source", list(CASES))
def test_a_shifted_sensor_of_each_source_is_caught_within_the_drift_hours(source, root):
    hour, manifests = fleet(source, True, str(root / f"{source}-shifted"))
    case = CASES[source]
    shifted = case.shifted
    assert len(manifests) >= case.alerted_by
    alerted = manifests[case.alerted_by - 1]
    assert alerted.alerting_sensors == ("/".join(shifted),), [rows(hour, m.hour).loc[shifted] for m in manifests]
    for m in manifests:
        others = rows(hour, m.hour).drop(index=[shifted])
        assert not others["drifting"].any(), others[["windows", "anomaly_rate", "expected_rate", "p_value"]]


def _earlier(windows: int, anomalies: int, drift_hours: int = 0, version: str = "v") -> pd.DataFrame:
    """One earlier hour's health row of the sensor of :func:`_one_sensor`, as stored."""
    return pd.DataFrame(
        {
            "device_id": ["d"],
            "tag": ["t"],
            "model_version": [version],
            "windows": [windows],
            "anomalies": [anomalies],
            "drift_hours": [drift_hours],
        }
    )


def _one_sensor(
    windows: int, anomalies: int, expected: float = 0.02, earlier: list[pd.DataFrame | None] | None = None
) -> pd.Series:
    """The health row of one sensor's hour, judged against statistics whose calibrated rate is ``expected``, after
    the ``earlier`` hours' rows (the hour before first)."""
    predictions = pd.DataFrame(
        {
            "device_id": "d",
            "tag": "t",
            "score": [-1.0] * anomalies + [1.0] * (windows - anomalies),
            "is_anomaly": [True] * anomalies + [False] * (windows - anomalies),
            "model_version": "v",
        }
    )
    table = pd.DataFrame(
        {
            "device_id": ["d"],
            "tag": ["t"],
            "train_rows": [1000],
            "train_flagged_share": [0.005],
            "edges": [[0.0]],
            "counts": [[5, 995]],
            "false_alarm_rate": [expected],
        }
    )
    empty = pd.DataFrame({"device_id": pd.Series(dtype=str), "tag": pd.Series(dtype=str)})
    return health.sensor_health(predictions, empty, {"v": table}, earlier, THRESHOLDS).iloc[0]


def test_the_drift_rule_judges_few_windows_by_their_improbability_and_many_by_their_excess():
    """Two flagged windows of two at a 2% rate are improbable (0.0004): a sparse sensor's hour is judged on the
    windows it has; one window never is. Eight of sixty (13%) are improbable but not far above the rate: a healthy
    sensor's flags come in runs. The expected rate is the calibrated one, not the lower share of the fit windows."""
    two = _one_sensor(2, 2)
    assert two["drifting"] and two["p_value"] == pytest.approx(0.02**2)
    assert two["expected_rate"] == 0.02 and two["train_flagged_share"] == 0.005
    assert not _one_sensor(1, 1)["drifting"]
    busy = _one_sensor(60, 8)
    assert busy["p_value"] < health.SIGNIFICANCE and not busy["drifting"]
    assert _one_sensor(60, 14)["drifting"]
    assert not _one_sensor(60, 0)["drifting"] and _one_sensor(60, 0)["p_value"] == 1.0
    # statistics from before the calibrated rate was recorded: the training share, at least 1 / (windows + 1)
    old = _one_sensor(3, 1, expected=float("nan"))
    assert old["expected_rate"] == pytest.approx(0.005) and not old["drifting"]


def test_a_thin_hour_is_judged_with_the_hours_before_it():
    """An hour with one window (at a 2% rate one flag is never improbable) is judged with the sensor's windows of
    the hours before it, of the same version, until two windows can be: two flags of two (0.0004) mark it. Only
    with an anomaly of its own; an hour without a health partition ends the look back; an hour without a window
    of the sensor is passed over, for the pool and for the run of drifting hours."""
    pooled = _one_sensor(1, 1, earlier=[_earlier(1, 1, drift_hours=1)])
    assert pooled["drifting"] and pooled["judged_windows"] == 2 and pooled["drift_hours"] == 2
    assert pooled["p_value"] == pytest.approx(0.02**2)
    assert not _one_sensor(1, 1, earlier=[_earlier(1, 0)])["drifting"]  # 1 of 2: p 0.04
    other = _one_sensor(1, 1, earlier=[_earlier(1, 1, version="v-before")])  # another model's flags
    assert not other["drifting"] and other["judged_windows"] == 1
    assert not _one_sensor(1, 0, earlier=[_earlier(1, 1), _earlier(1, 1)])["drifting"]
    assert not _one_sensor(1, 1, earlier=[None, _earlier(1, 1)])["drifting"]  # the hour before was not judged
    silent = _one_sensor(1, 1, earlier=[_earlier(0, 0), _earlier(1, 1, drift_hours=3)])
    assert silent["drifting"] and silent["judged_windows"] == 2 and silent["drift_hours"] == 4
    # a dense hour is judged on its own, as before
    dense = _one_sensor(60, 14, earlier=[_earlier(60, 60)])
    assert dense["drifting"] and dense["judged_windows"] == 60
    assert not _one_sensor(60, 1, earlier=[_earlier(60, 60)])["drifting"]
    # the look back stops at POOL_HOURS hours in all
    far = [_earlier(0, 0)] * (health.POOL_HOURS - 1) + [_earlier(1, 1)]
    assert not _one_sensor(1, 1, earlier=far)["drifting"]
    assert _one_sensor(1, 1, earlier=far[1:])["drifting"]


def test_thin_hours_are_judged_the_same_in_any_order(root):
    """The hourly sensor's pooled judgements and runs do not depend on the order its hours' health is computed
    in: each hour judges the later ones again, and the alerts due are sent when they become due."""
    hour, manifests = fleet("sparse-hourly", True, str(root / "sparse-hourly-shifted"))
    hours = scored_hours("sparse-hourly")
    decided = ["p_value", "judged_windows", "drifting", "drift_hours"]
    expected = {h: rows(hour, h)[decided] for h in hours}
    assert expected[hours[-1]].loc[CASES["sparse-hourly"].shifted, "judged_windows"] > 1
    alerted = {m.hour for m in manifests if m.alerting}
    assert alerted
    for order in (hours[::-1], [hours[2], hours[0], hours[4], hours[1], hours[3]]):
        shutil.rmtree(hour.storage.root / hour.containers.health)
        got = []
        for h in order:
            got += health.model_health(Scope(hour.storage, hour.containers, f"health-{h:%H}", h, h + H), THRESHOLDS)
        for h in hours:
            pd.testing.assert_frame_equal(rows(hour, h)[decided], expected[h], obj=f"{h} after {order}")
        assert {m.hour for m in got if m.alerting} == alerted


def test_drift_hours_carry_into_an_hour_written_before_the_expected_rate_was(root):
    """A later hour whose health was written without ``expected_rate`` and ``p_value`` (by the release before), before
    the hour before it: that hour's health recomputes the later one's drift hours and keeps its rows, the new columns
    null."""
    hour, manifests = fleet("simulator", True, str(root / "simulator-shifted"))
    first, later = manifests[0].hour, manifests[1].hour
    path = layout.Partition(later).data
    kept = read_parquet(hour.storage, hour.containers.health, path)
    written = kept.drop(columns=["expected_rate", "p_value"]).assign(drift_hours=kept["drift_hours"].clip(upper=1))
    assert not written["drift_hours"].equals(kept["drift_hours"])  # as if scored before the hour before it
    hour.storage.write_bytes(hour.containers.health, path, written.to_parquet(index=False))
    health.model_health(Scope(hour.storage, hour.containers, "again", first, first + H), THRESHOLDS)
    after = read_parquet(hour.storage, hour.containers.health, path)
    assert list(after.columns) == list(health.HEALTH_SCHEMA.names) and after["expected_rate"].isna().all()
    assert after["drift_hours"].tolist() == kept["drift_hours"].tolist()
