"""The calibrated false-alarm rate: split-conformal thresholds that hold on normal windows the models never saw,
tie-aware so identical windows never flip a sensor to all-anomalous, and a stated rule for degenerate sensors."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sensor_scoring import features
from sensor_scoring.contracts import ShardContainers, SkippedSensor, TrainingShardResult, TrainingShardSpec
from sensor_scoring.models import fitting, pack, registry
from sensor_scoring.scorer import score
from sensor_scoring.storage import LocalStorage, make_uri, parquet_bytes, read_parquet
from tests.support.helpers import START

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import detection_sources as sources  # noqa: E402  (the benchmark's evaluation sources)

KEY = ["device_id", "tag"]
#: The confidence of the bound below: a run flags more than it with probability at most 0.1% if the rate holds.
CONFIDENCE = 0.999


def rate_bound(trained: list[fitting.TrainedModel], scored: pd.DataFrame, rate: float, seed: int = 0) -> float:
    """The share of ``scored`` normal windows the models flag at most, at ``CONFIDENCE``, if the calibration holds.

    Split conformal, per sensor: given its n calibration windows and k = max(1, floor(rate (n + 1))), the share of
    new exchangeable windows below the k-th calibration value is Beta(k, n + 1 - k)-distributed (the finite-sample
    slack around k / (n + 1) <= rate; ties only lower it), and the flags among its N scored windows are binomial
    given that share. The fleet's count is their sum over sensors (independent calibrations): its CONFIDENCE
    quantile, drawn 20,000 times, divided by the windows scored.
    """
    rng = np.random.default_rng(seed)
    counts = scored.groupby(KEY, sort=True).size()
    total = np.zeros(20_000)
    for m in trained:
        n = m.calibration_windows
        k = max(1, int(np.floor(rate * (n + 1) + 1e-12)))
        share = rng.beta(k, n + 1 - k, len(total))
        total += rng.binomial(int(counts.get((m.device_id, m.tag), 0)), share)
    return float(np.quantile(total, CONFIDENCE)) / len(scored)


def clean_sensor_data() -> pd.DataFrame:
    """The sparse source's counters and processes, no anomalies injected (its setpoints are left out: a setpoint
    moved to a value its history never held is not exchangeable with that history, and flagging it is the job)."""
    src = sources.sparse(anomalies=False)
    return src.readings.loc[src.readings["tag"] != "setpoint"], src.cut


@functools.cache
def held_out(source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A source without injected anomalies as windows with their features: its training part, its later part."""
    from sensor_scoring.windows import aggregate_readings

    if source == "sparse":
        readings, cut = clean_sensor_data()
    else:
        src = getattr(sources, source)(anomalies=False)
        readings, cut = src.readings, src.cut
    windows = aggregate_readings(readings)
    later = (windows["window_end"] > cut).to_numpy()
    train = features.add_features(windows.loc[~later].reset_index(drop=True))
    return train, features.add_features(windows.loc[later].reset_index(drop=True), context=train)


@pytest.mark.parametrize("source", ["simulator", "shapes", "sparse"])
@pytest.mark.parametrize("rate", [0.01, fitting.DEFAULT_FALSE_ALARM_RATE])
def test_flagged_share_of_normal_held_out_windows_stays_within_the_binomial_bound(source, rate):
    """Each evaluation source without injected anomalies: train on its training part, score its later part (every
    window normal) with the hourly scorer; the share flagged stays within the bound of the conformal guarantee."""
    train, scored = held_out(source)
    trained, skipped = fitting.fit_sensors(
        train, nu=fitting.DEFAULT_NU, features=features.DEFAULT_FEATURE_SET, false_alarm_rate=rate
    )
    assert trained and not skipped
    flagged = score(scored, {(m.device_id, m.tag): m.arrays for m in trained})["is_anomaly"]
    bound = rate_bound(trained, scored, rate)
    assert flagged.mean() <= bound, f"{source}: flagged {flagged.mean():.4f} of normal windows, bound {bound:.4f}"
    # the bound is about the stated rate, not a loose number: it stays within a few points of it
    assert bound < rate + 0.02
    assert all(m.false_alarm_rate is not None and m.false_alarm_rate >= rate for m in trained)


def test_conformal_threshold_is_the_finite_sample_quantile_and_strict():
    arrays = fitting.arrays_of(fitting.fit_pipeline(np.random.default_rng(0).normal(size=(50, 2))))
    values = np.random.default_rng(1).permutation(np.arange(1.0, 100.0))  # 99 calibration values 1..99
    threshold, guaranteed = fitting.conformal_threshold(values, 0.05, arrays)  # k = floor(0.05 * 100) = 5
    assert 4.0 < threshold < 5.0 and guaranteed == 0.05
    assert (values <= threshold).sum() == 4  # strictly below the 5th value: 4 of 99, <= 5 / 100
    # too few calibration windows for the rate: the lowest threshold they support, and the rate that holds
    threshold, guaranteed = fitting.conformal_threshold(values[:10], 0.05, arrays)
    assert threshold < values[:10].min() and guaranteed == pytest.approx(1 / 11)
    with pytest.raises(ValueError, match="between 0 and 1"):
        fitting.conformal_threshold(values, 0.0, arrays)


def windows_of(values: np.ndarray, device: str = "dev-0000", tag: str = "t") -> pd.DataFrame:
    """One-reading windows (a sensor reporting once a minute or less), one a minute from START."""
    ends = pd.date_range(START + timedelta(minutes=1), periods=len(values), freq="min")
    frame = pd.DataFrame(
        {
            "device_id": device,
            "tag": tag,
            "window_end": ends,
            "value_avg": values,
            "value_min": values,
            "value_max": values,
            "value_std": 0.0,
            "reading_count": 1,
        }
    )
    return features.add_features(frame)


@pytest.mark.parametrize("feature_set", list(features.FEATURE_SETS))
def test_tied_windows_are_never_flagged(feature_set):
    """A counter that is mostly exactly 0: its tied windows sit where the boundary may pass through; none of
    them is flagged, in training or later, while a far-out count is."""
    rng = np.random.default_rng(3)
    history = np.where(rng.random(600) < 0.9, 0.0, rng.poisson(2.0, 600).astype(float))
    trained, skipped = fitting.fit_sensors(windows_of(history), features=feature_set, false_alarm_rate=0.02)
    assert len(trained) == 1 and not skipped
    model = trained[0].arrays
    later = windows_of(np.array([0.0] * 50 + [40.0]))
    later["window_end"] += pd.Timedelta(days=1)
    flags = score(later, {("dev-0000", "t"): model})["is_anomaly"].to_numpy()
    assert not flags[:50].any() and flags[50]
    assert trained[0].flagged_share < 0.05


def test_constant_and_short_histories_are_skipped_with_their_reason():
    rng = np.random.default_rng(4)
    frame = pd.concat(
        [
            windows_of(np.full(200, 7.25), tag="constant"),
            windows_of(7.25 + rng.normal(0, 1e-13, 200), tag="near-constant"),
            windows_of(rng.normal(0, 1, 20), tag="short"),
            windows_of(rng.normal(0, 1, 200), tag="ordinary"),
            # a setpoint that held for the part fit on and moved in the calibration part: the fit would see one
            # value (its scaled spread rounding noise, its gamma ~1e28)
            windows_of(np.r_[np.full(150, 48.83), np.full(50, 48.86)], tag="moved-late"),
        ],
        ignore_index=True,
    )
    trained, skipped = fitting.fit_sensors(frame, min_rows=30, false_alarm_rate=0.02)
    assert [m.tag for m in trained] == ["ordinary"]
    assert {(s.tag, s.reason) for s in skipped} == {
        ("constant", "constant_history"),
        ("near-constant", "constant_history"),
        ("short", "too_few_windows"),
        ("moved-late", "constant_history"),
    }
    # the fit part needs min_rows too: 35 windows leave 27 to fit on
    assert fitting.fit_sensors(windows_of(rng.normal(0, 1, 35)), min_rows=30, false_alarm_rate=0.02)[1][0].reason == (
        "too_few_windows"
    )


def staged_shard(storage: LocalStorage, folder: str, windows: pd.DataFrame, **options: object) -> str:
    """A training shard's input and spec (nu 0.02, min_rows 30, false_alarm_rate 0.02, ``options``) written under
    ``folder`` in staging; the spec's URI."""
    storage.write_bytes("staging", f"{folder}/input.parquet", parquet_bytes(windows))
    spec = TrainingShardSpec(
        run_id="r",
        shard=0,
        containers=ShardContainers(models="models", staging="staging"),
        input=make_uri("staging", f"{folder}/input.parquet"),
        output_prefix=make_uri("staging", f"{folder}/out/"),
        nu=0.02,
        min_rows=30,
        false_alarm_rate=0.02,
        **options,  # type: ignore[arg-type]
    )
    storage.write_bytes("staging", f"{folder}/spec.json", spec.to_json())
    return make_uri("staging", f"{folder}/spec.json")


def test_a_training_shard_calibrates_records_and_the_version_keeps_skipped_sensors(tmp_path):
    """The spec's false_alarm_rate reaches the fit; the shard's index and the version's index record each model's
    rate and calibration windows; skipped sensors and their reasons reach ``skipped.parquet`` and the manifest."""
    from sensor_scoring.steps.training import load_trained, skipped_table, train_shard

    storage = LocalStorage(tmp_path)
    rng = np.random.default_rng(5)
    windows = pd.concat(
        [windows_of(rng.normal(0, 1, 400), tag="a"), windows_of(np.zeros(400), tag="flat")], ignore_index=True
    )
    result = train_shard(storage, staged_shard(storage, "shard", windows, features=features.WINDOW_V1))
    assert (result.models, result.skipped) == (1, ("dev-0000/flat",))
    assert result.skipped_sensors == (SkippedSensor("dev-0000", "flat", "constant_history"),)
    trained = load_trained(storage, [result])
    assert trained[0].false_alarm_rate == 0.02 and trained[0].calibration_windows == 100
    manifest = registry.register(
        storage,
        "models",
        trained,
        version="v1",
        params={"false_alarm_rate": 0.02},
        promote=False,
        skipped=skipped_table([result]),
    )
    assert manifest["skipped"] == {"constant_history": 1} and manifest["params"] == {"false_alarm_rate": 0.02}
    index = registry.read_index(storage, "models", "v1")
    assert index[["false_alarm_rate", "calibration_windows"]].to_dict("records") == [
        {"false_alarm_rate": 0.02, "calibration_windows": 100}
    ]
    assert read_parquet(storage, "models", "versions/v1/skipped.parquet").to_dict("records") == [
        {"device_id": "dev-0000", "tag": "flat", "reason": "constant_history"}
    ]
    loaded, refused = registry.load_models(storage, "models", "v1", index)
    assert not refused and loaded[("dev-0000", "a")].threshold == trained[0].arrays.threshold
    assert pack.unpack(storage.read_bytes("staging", "shard/out/models.npz"))[0].digest() == trained[0].arrays.digest()


def test_a_refitting_shard_registers_only_the_sensors_the_gate_judges(tmp_path):
    """With ``held_back_from``: judged models from the windows before it, registered ones refit on all; a sensor
    with too few windows before the held-back hours (but enough with them) is skipped with that reason, not given
    a model nobody judged; one whose part before them is constant likewise."""
    from sensor_scoring.steps.training import load_trained, train_shard

    storage = LocalStorage(tmp_path)
    rng = np.random.default_rng(6)
    ordinary = windows_of(rng.normal(0, 1, 400), tag="a")
    late = windows_of(rng.normal(0, 1, 400), tag="late").iloc[340:]  # 20 windows before the cut, 40 after
    moved = windows_of(np.r_[np.zeros(300), rng.normal(0, 1, 100)], tag="moved")  # constant before the cut
    cut = ordinary["window_end"].iloc[360]
    windows = pd.concat([ordinary, late, moved])
    result = train_shard(storage, staged_shard(storage, "s", windows, held_back_from=cut.isoformat()))
    assert (result.models, result.judged_models, result.sensors, result.windows) == (1, 1, 3, 860)
    assert {(s.tag, s.reason) for s in result.skipped_sensors} == {
        ("late", "too_few_windows"),
        ("moved", "constant_history"),
    }
    [judged], [registered] = load_trained(storage, [result], judged=True), load_trained(storage, [result])
    assert (judged.rows, registered.rows) == (360, 400) and pd.Timestamp(judged.train_end) < cut
    assert (judged.calibration_windows, registered.calibration_windows) == (90, 100)
    assert judged.arrays.digest() != registered.arrays.digest()


def test_specs_and_results_written_before_the_rate_still_read():
    from sensor_scoring.steps.training import skipped_table

    spec = json.loads(
        TrainingShardSpec(
            run_id="r",
            shard=0,
            containers=ShardContainers(models="m", staging="s"),
            input="az://s/i",
            output_prefix="az://s/o",
            nu=0.02,
            min_rows=30,
        ).to_json()
    )
    del spec["false_alarm_rate"]
    assert TrainingShardSpec.from_dict(spec, source="old spec").false_alarm_rate is None
    result = TrainingShardResult(shard=0, output_prefix="az://s/o", models=1, sensors=2, windows=3, skipped=("d/t",))
    old = result.to_dict()
    del old["skipped_sensors"]
    older = TrainingShardResult.from_dict(old, source="old result")
    assert older.skipped_sensors == ()
    assert skipped_table([older]).to_dict("records") == [{"device_id": "d", "tag": "t", "reason": "too_few_windows"}]
    back = TrainingShardResult.from_json(
        dataclasses.replace(result, skipped_sensors=(SkippedSensor("a/b", "t", "constant_history"),)).to_json(), "r"
    )
    assert skipped_table([back]).to_dict("records") == [{"device_id": "a/b", "tag": "t", "reason": "constant_history"}]
