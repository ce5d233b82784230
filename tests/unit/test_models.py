"""Model packs: the arrays round-trip, hashes are checked, and nothing but plain numbers ever loads."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from sensor_scoring.features import feature_matrix
from sensor_scoring.models import fitting, pack, registry
from sensor_scoring.scorer import ModelArrays
from sensor_scoring.storage import LocalStorage, parquet_bytes, read_parquet as st_read
from tests.support.helpers import fleet_windows


@pytest.fixture(scope="module")
def trained() -> list[fitting.TrainedModel]:
    return fitting.train_models(fleet_windows(devices=2, tags=2, hours=3))


def test_pack_round_trip_keeps_every_number(trained):
    back = pack.unpack(pack.pack_bytes([m.arrays for m in trained]))
    assert [b.digest() for b in back] == [m.arrays.digest() for m in trained]
    np.testing.assert_array_equal(back[1].support_vectors, trained[1].arrays.support_vectors)


def test_digest_changes_with_any_number(trained):
    arrays = trained[0].arrays
    changed = ModelArrays(
        arrays.mean, arrays.scale, arrays.support_vectors, arrays.dual_coef, arrays.intercept + 1e-12, arrays.gamma
    )
    assert changed.digest() != arrays.digest()


def test_pickled_payload_is_refused_not_executed(tmp_path):
    """A pack holding an object array would need pickle to load: numpy refuses, nothing runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    sink = io.BytesIO()
    np.savez(sink, mean=np.array([Exploit()], dtype=object))
    with pytest.raises(pack.ModelIntegrityError):
        pack.unpack(sink.getvalue())
    assert not marker.exists()


def test_register_writes_manifest_index_and_alias(tmp_path, trained):
    storage = LocalStorage(tmp_path)
    manifest = registry.register(storage, "models", trained, version="v1", params={"nu": 0.02}, promote=True)
    assert manifest["models"] == len(trained)
    assert set(manifest["libraries"]) >= {"numpy", "scikit-learn"}
    assert registry.resolve_version(storage, "models", "production") == "v1"
    index = registry.read_index(storage, "models", "v1")
    assert list(index.columns[:5]) == ["device_id", "tag", "pack", "row", "sha256"]
    assert (index["train_rows"] > 0).all() and (index["features"] == "window-v1").all()
    assert manifest["features"] == "window-v1"
    assert manifest["feature_columns"] == ["value_avg", "value_min", "value_max", "value_std", "reading_count"]
    with pytest.raises(FileExistsError):
        registry.register(storage, "models", trained, version="v1", params={}, promote=False)
    with pytest.raises(LookupError, match="train and promote"):
        registry.resolve_version(storage, "models", "staging-alias")


def test_load_models_reads_each_pack_once_and_refuses_tampering(tmp_path, trained, monkeypatch):
    storage = LocalStorage(tmp_path)
    monkeypatch.setattr(pack, "PACK_SIZE", 2)
    registry.register(storage, "models", trained, version="v1", params={}, promote=False)
    index = registry.read_index(storage, "models", "v1")
    reads = []
    original = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda c, p: reads.append(p) or original(c, p))
    loaded, refused = registry.load_models(storage, "models", "v1", index)
    assert len(loaded) == len(trained) and not refused
    # each pack once, and the manifest once: the version's feature set, which the loaded models carry
    assert sorted(reads) == ["versions/v1/manifest.json", "versions/v1/pack-00000.npz", "versions/v1/pack-00001.npz"]
    assert {m.features for m in loaded.values()} == {"window-v1"}
    tampered = index.copy()
    tampered.loc[0, "sha256"] = "0" * 64
    loaded, refused = registry.load_models(storage, "models", "v1", tampered)
    assert refused == {(tampered.loc[0, "device_id"], tampered.loc[0, "tag"]): "model_hash_mismatch"}
    storage.write_bytes("models", "versions/v1/pack-00001.npz", b"not an npz")
    _, refused = registry.load_models(storage, "models", "v1", index)
    assert sorted(refused.values()) == ["model_unreadable", "model_unreadable"]


def test_index_tampering_is_detected(tmp_path, trained):
    storage = LocalStorage(tmp_path)
    registry.register(storage, "models", trained, version="v1", params={}, promote=False)
    frame = registry.read_index(storage, "models", "v1")
    frame.loc[0, "sha256"] = "f" * 64
    storage.write_bytes("models", "versions/v1/models.parquet", parquet_bytes(frame))
    with pytest.raises(pack.ModelIntegrityError, match="does not match"):
        registry.read_index(storage, "models", "v1")


def test_sensors_with_too_few_windows_get_no_model():
    windows = fleet_windows(devices=1, tags=2, hours=1)
    sparse = pd.concat([windows[windows["tag"] == "temperature"], windows[windows["tag"] == "pressure"].head(5)])
    trained = fitting.train_models(sparse, min_rows=30)
    assert [(m.device_id, m.tag) for m in trained] == [("dev-0000", "temperature")]
    with pytest.raises(ValueError, match="no models"):
        registry.register(LocalStorage("/nonexistent"), "models", [], version="v", params={}, promote=False)


def test_training_takes_exactly_the_valid_windows_a_scoring_run_of_its_interval_owns(tmp_path):
    """One ownership rule: the training DAG's gather and a scoring run of the same interval (plan_shards, its
    read_windows tasks, the shards' suite: ``check_shard``, what score_shard runs before scoring) take the same valid
    windows of [start, end) and quarantine the same strays."""
    from collections import Counter
    from datetime import timedelta

    from sensor_scoring import layout, settings as config
    from sensor_scoring.contracts import WINDOW_COLUMNS, WINDOW_KEY
    from sensor_scoring.runs.scope import Scope
    from sensor_scoring.steps.load import check_shard
    from sensor_scoring.steps.training import gather
    from sensor_scoring.windows import LandingPlan, land_windows, to_asa_json_lines
    from tests.support.helpers import START, read_and_plan

    storage, containers, H = LocalStorage(tmp_path), config.Containers(), timedelta(hours=1)
    windows = fleet_windows(devices=1, tags=2, hours=4)
    land_windows(storage, containers.windows, windows, LandingPlan(late_share=1.0))  # late windows in the next folder
    # a version to plan the scoring runs with (its sensors are routed by it; the others by their slot)
    registry.register(storage, containers.models, fitting.train_models(windows), version="v1", params={}, promote=True)
    one = windows.head(1)
    stray = one.assign(window_end=START - 24 * H)  # in an own folder, its own hour's run never reads it: quarantined
    late = pd.concat(
        [
            # new keys on the minute (a window off the minute is rejected by the reader)
            one.assign(device_id="dev-late", window_end=START + H),  # inside, found in the late folder
            one.assign(device_id="dev-late", window_end=START + 2 * H),
        ]
    )  # with a two-hour range, the third hour's: not owned
    # ahead of its folder: a stray of START + H, whose run quarantines it; inside a three-hour range all the same
    ahead = one.assign(device_id="dev-ahead", window_end=START + 2 * H + pd.Timedelta(minutes=10))
    stray = pd.concat([stray, ahead])
    storage.write_bytes(containers.windows, f"{START + H:%Y/%m/%d/%H}/0_stray_1.json", to_asa_json_lines(stray))
    storage.write_bytes(containers.windows, f"{START + 2 * H:%Y/%m/%d/%H}/0_late_1.json", to_asa_json_lines(late))
    key = list(WINDOW_KEY)
    for hours, valid, outside in ((2, 2 * 120 + 1, 2), (3, 3 * 120 + 2, 2)):
        training = Scope(storage, containers, f"training-{hours}", START, START + hours * H)
        shards = gather(training, holdout_hours=0, sensors_per_shard=100, nu=0.02, min_rows=30)
        [trained_on] = [
            st_read(storage, containers.staging, layout.TrainingRun(training.run_key).shard(s.shard).input)
            for s in shards
        ]
        hour = Scope(storage, containers, f"same-rule-{hours}", START, START + hours * H)
        _, shards = read_and_plan(hour)
        run = layout.Run(hour.run_key)
        checks = [
            check_shard(storage, containers.staging, run.shard(s.shard).input, hour.start, hour.end) for s in shards
        ]
        scored = pd.concat([c.checked.valid for c in checks], ignore_index=True)
        reasons: Counter[str] = Counter()
        for c in checks:
            for by_reason in c.validation.failing_by_hour.values():
                reasons.update(by_reason)
        assert len(trained_on) == len(scored) == sum(c.validation.valid for c in checks) == valid
        assert reasons == {"window_outside_interval": outside - 1, "window_landed_early": 1}
        assert "dev-ahead" not in set(trained_on["device_id"])
        pd.testing.assert_frame_equal(
            trained_on[WINDOW_COLUMNS].sort_values(key).reset_index(drop=True),
            scored[WINDOW_COLUMNS].sort_values(key).reset_index(drop=True),
        )


def test_calibrated_threshold_round_trips_and_keeps_sklearn_parity():
    """A threshold calibrated on the training decision values: stored in the pack, hashed, and the scorer flags
    exactly where scikit-learn's decision_function is at or below it."""
    from sensor_scoring.scorer import score

    windows = fleet_windows(devices=2, tags=2, hours=3)
    calibrated = fitting.train_models(windows, threshold_mads=5.0)
    plain = fitting.train_models(windows)
    for c, p in zip(calibrated, plain, strict=True):
        features = feature_matrix(windows[(windows["device_id"] == c.device_id) & (windows["tag"] == c.tag)])
        decision = c.pipeline.decision_function(features)
        spread = 1.4826 * np.median(np.abs(decision - np.median(decision)))
        assert c.arrays.threshold == min(0.0, float(np.median(decision) - 5.0 * spread)) < 0.0
        assert c.flagged_share == float((decision <= c.arrays.threshold).mean()) < p.flagged_share
        assert p.arrays.threshold == 0.0 and c.arrays.digest() != p.arrays.digest()
    back = pack.unpack(pack.pack_bytes([m.arrays for m in calibrated]))
    assert [b.threshold for b in back] == [m.arrays.threshold for m in calibrated]
    assert [b.digest() for b in back] == [m.arrays.digest() for m in calibrated]
    scored = score(windows, {(m.device_id, m.tag): b for m, b in zip(calibrated, back, strict=True)})
    for m in calibrated:
        rows = scored[(scored["device_id"] == m.device_id) & (scored["tag"] == m.tag)]
        decision = m.pipeline.decision_function(feature_matrix(rows))
        np.testing.assert_allclose(rows["score"], decision, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(rows["is_anomaly"], decision <= m.arrays.threshold)
    with pytest.raises(ValueError, match="threshold_mads"):
        fitting.train_models(windows, threshold_mads=0.0)


def test_a_pack_written_before_thresholds_reads_with_threshold_zero(trained):
    """Older packs have no threshold array: their models flag as scikit-learn's predict, and hash as before."""
    data = pack.pack_bytes([m.arrays for m in trained])
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        old = {name: npz[name] for name in pack.ARRAY_FIELDS}  # every array but threshold
    sink = io.BytesIO()
    np.savez(sink, allow_pickle=False, **old)
    back = pack.unpack(sink.getvalue())
    assert [b.threshold for b in back] == [0.0] * len(trained)
    assert [b.digest() for b in back] == [m.arrays.digest() for m in trained]


def test_adaptive_nu_keeps_the_floor_on_clean_windows_and_rises_with_far_out_ones():
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 1, (1000, 4))
    assert fitting.adaptive_nu(clean, 0.02) == 0.02
    dirty = clean.copy()
    dirty[:40, 1] = 50.0  # 4% of windows far out in one feature
    assert fitting.adaptive_nu(dirty, 0.02) == pytest.approx(2 * 0.04 + fitting.NU_MARGIN)
    dirty[:, 2] = 1.0  # a constant feature (MAD 0) marks nothing far out by itself
    assert fitting.adaptive_nu(dirty, 0.02) == pytest.approx(2 * 0.04 + fitting.NU_MARGIN)
    dirty[:600, 1] = 50.0
    assert fitting.adaptive_nu(dirty, 0.02) <= fitting.NU_MAX
    assert fitting.adaptive_nu(clean, 0.3) == 0.3  # never below the run's nu


def test_train_models_records_each_sensors_nu():
    windows = fleet_windows(devices=1, tags=2, hours=2)
    fixed = fitting.train_models(windows, nu=0.05)
    assert {m.nu for m in fixed} == {0.05}
    adaptive = fitting.train_models(windows, nu=0.02, adaptive=True)
    assert all(m.nu is not None and 0.02 <= m.nu <= fitting.NU_MAX for m in adaptive)
