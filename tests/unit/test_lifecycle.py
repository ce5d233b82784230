"""The model lifecycle on a directory storage, through the training DAG's own steps (``steps.training.train_locally``):
a subset promotion keeps every sensor production scores, a promotion that would drop sensors is refused, rollback
walks back the promotion path (twice goes two steps back, never forward), a model of another width is refused at
load.

Small data: 3 devices x 2 sensors of the simulator, 26 hours (a day trains: the simulated baselines follow the day),
the last 2 held back.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pandas as pd
import pytest

from sensor_scoring import settings as config
from sensor_scoring.models import fitting, promotion, registry
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps.training import train_locally
from sensor_scoring.storage import LocalStorage
from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage
from tests.support.helpers import START, fleet_windows
from tests.support.training import training_params

H = timedelta(hours=1)
KEY = ["device_id", "tag"]
PARAMS = training_params(holdout_hours=2, sensors_per_shard=4, features="context-v1", false_alarm_rate=None)


@pytest.fixture(scope="module")
def landed(tmp_path_factory) -> tuple[LocalStorage, config.Containers]:
    storage, containers = LocalStorage(str(tmp_path_factory.mktemp("lifecycle"))), config.Containers()
    simulate_to_storage(
        storage,
        SimulationConfig(devices=3, tags=2, seed=3, anomaly_rate=0.3),
        START,
        START + 26 * H,
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    return storage, containers


def _fresh(landed, tmp_path) -> Scope:
    """The landed windows in a storage of this test's own (a copy: versions and aliases start empty)."""
    import shutil

    storage, containers = landed
    shutil.copytree(storage.root / containers.windows, tmp_path / containers.windows)
    shutil.copytree(storage.root / containers.labels, tmp_path / containers.labels)
    return Scope(LocalStorage(str(tmp_path)), containers, "training-run", START, START + 26 * H)


def _index(run: Scope, version: str) -> pd.DataFrame:
    return registry.read_index(run.storage, run.containers.models, version).set_index(KEY).sort_index()


def test_a_subset_version_is_promoted_as_production_with_that_subset_replaced(landed, tmp_path):
    run = _fresh(landed, tmp_path)
    policy = promotion.Policy()
    full = train_locally(run, PARAMS, policy, version="v-full")
    assert full["promoted"] and full["models"] == 6

    # a subset retrained with one fixed nu (the same params would give the same models: training is deterministic);
    # the policy here judges coverage, not F1 on these few labelled windows
    lenient = promotion.Policy(max_f1_drop=1.0)
    subset = train_locally(
        run, {**PARAMS, "devices": ["dev-0000"], "nu": 0.03, "adaptive_nu": False}, lenient, version="v-sub"
    )
    assert subset["promoted"], subset["reason"]
    assert "4 sensor(s) keep v-full's models" in str(subset["reason"])
    coverage = subset["evaluation"]["coverage"]
    assert coverage["carried"] == 4 and coverage["uncovered"] == 0 and coverage["carried_from"] == "v-full"
    before, after = _index(run, "v-full"), _index(run, "v-sub")
    assert list(after.index) == list(before.index)  # the same six sensors before and after the promotion
    carried = after["carried_from"].eq("v-full")
    assert sorted(after.index[carried].get_level_values(0).unique()) == ["dev-0001", "dev-0002"]
    assert (after.loc[carried, "sha256"] == before.loc[carried, "sha256"]).all()  # production's models, unchanged
    new = after.loc[~carried]
    assert set(new.index.get_level_values(0)) == {"dev-0000"} and new["carried_from"].isna().all()
    assert (new["sha256"] != before.loc[~carried, "sha256"]).all() and (new["nu"] == 0.03).all()
    manifest = registry.read_manifest(run.storage, run.containers.models, "v-sub")
    assert manifest["models"] == 6 and manifest["lineage"]["carried"] == {"from": "v-full", "models": 4}

    # every sensor production scored is still scored: the next hour plans no no_model window
    from sensor_scoring.steps.score import score_shard
    from tests.support.helpers import read_and_plan

    hour = Scope(run.storage, run.containers, "score-run", START + 25 * H, START + 26 * H)
    _, shards = read_and_plan(hour)
    assert sum(s.sensors for s in shards) == 6
    results = [score_shard(run.storage, s.spec_uri) for s in shards]
    assert sum(r.scored for r in results) > 0 and not any(r.refused_models for r in results)
    assert sum(r.scored for r in results) + sum(r.quarantined for r in results) == 6 * 60
    assert sum(r.validation.failing_rows_by_hour.get(hour.start.isoformat(), 0) for r in results) == sum(
        r.quarantined for r in results
    )  # every quarantined window failed validation: none is no_model

    # the statistics health compares hours with cover the carried models too
    from sensor_scoring.models import stats

    table = stats.read(run.storage, run.containers.models, "v-sub")
    assert table is not None and len(table) == 6


def test_judged_models_never_saw_the_held_back_hours_and_the_registered_are_refit_on_them(landed, tmp_path):
    """The judged models never saw the held-back hours; the registered ones are the same parameters fit on the
    whole range (their calibration windows the latest of it); without refit the judged ones are registered. Refit
    changes what is registered, not what the gate saw."""
    from sensor_scoring import layout, storage as st
    from sensor_scoring.steps.training import gather, load_trained, train_shard

    run = _fresh(landed, tmp_path)
    cut, last = pd.Timestamp(run.end - 2 * H), pd.Timestamp(run.end - timedelta(minutes=1))
    rate = {**PARAMS, "false_alarm_rate": 0.02, "features": "window-v1"}
    shards = gather(
        run,
        holdout_hours=2,
        sensors_per_shard=4,
        nu=0.02,
        min_rows=30,
        false_alarm_rate=0.02,
        features="window-v1",
    )
    assert {s.sensors for s in shards} == {4, 2}
    for s in shards:  # each shard's input holds its sensors' held-back windows too
        staged = layout.TrainingRun(run.run_key).shard(s.shard).input
        rows = st.read_parquet(run.storage, run.containers.staging, staged)
        assert rows["window_end"].max() == last and (rows["window_end"] >= cut).sum() == s.sensors * 2 * 60
    results = [train_shard(run.storage, s.spec_uri) for s in shards]
    assert [r.judged_models for r in results] == [r.models for r in results] == [4, 2]
    judged, registered = load_trained(run.storage, results, judged=True), load_trained(run.storage, results)
    assert [(m.device_id, m.tag) for m in judged] == [(m.device_id, m.tag) for m in registered]
    for j, r in zip(judged, registered, strict=True):
        assert pd.Timestamp(j.train_end) < cut <= pd.Timestamp(r.train_end) == last
        assert r.rows == j.rows + 2 * 60 and r.calibration_windows == int(0.25 * r.rows)
        assert r.false_alarm_rate == j.false_alarm_rate == 0.02
    run.storage.delete_prefix(run.containers.staging, layout.TrainingRun(run.run_key).prefix)

    lenient = promotion.Policy(max_f1_drop=1.0, max_flagged_share=1.0, false_alarm_rate=1.0)
    refit = train_locally(run, rate, lenient, version="v-refit")
    plain = train_locally(run, {**rate, "refit": False, "promote": False}, lenient, version="v-plain")
    assert refit["evaluation"]["candidate"] == plain["evaluation"]["candidate"]  # the gate judged the same models
    assert pd.Timestamp(refit["train_end"]) == last and pd.Timestamp(plain["train_end"]) < cut
    manifest = registry.read_manifest(run.storage, run.containers.models, "v-refit")
    assert manifest["params"]["refit"] is True
    assert registry.read_manifest(run.storage, run.containers.models, "v-plain")["params"]["refit"] is False


def test_production_fit_on_the_held_back_hours_is_not_compared_on_them(landed, tmp_path):
    """A second run over a range production was refit on: production saw its held-back windows, so the gate leaves
    it out of the F1 comparison (and says how many) instead of letting it win on windows it was fit on."""
    run = _fresh(landed, tmp_path)
    policy = promotion.Policy(max_f1_drop=1.0)
    first = train_locally(run, {**PARAMS, "refit": False}, policy, version="v1")
    assert first["promoted"]
    again = train_locally(run, PARAMS, policy, version="v2")  # production v1 was fit before the held-back hours
    verdict = registry.read_manifest(run.storage, run.containers.models, "v2")["lineage"]["evaluation"]
    assert verdict["production_fit_on_held_back"] == 0 and again["evaluation"]["production"]["windows"] == 6 * 120
    third = train_locally(run, PARAMS, policy, version="v3")  # production v2 was refit on them
    verdict = registry.read_manifest(run.storage, run.containers.models, "v3")["lineage"]["evaluation"]
    assert verdict["production_fit_on_held_back"] == 6 and verdict["production_version"] == "v2"
    assert third["evaluation"]["production"] is None and third["evaluation"]["coverage"]["uncovered"] == 0


def test_a_subset_of_another_feature_set_is_refused_naming_why(landed, tmp_path):
    run = _fresh(landed, tmp_path)
    policy = promotion.Policy()
    assert train_locally(run, {**PARAMS, "features": "window-v1"}, policy, version="v-window")["promoted"]
    subset = train_locally(run, {**PARAMS, "devices": ["dev-0000"]}, policy, version="v-sub")
    assert not subset["promoted"]
    reason = str(subset["reason"])
    assert "no model for 4 of the 6 sensors production (v-window) scores" in reason
    assert "dev-0001/pressure" in reason and "feature set window-v1" in reason and "context-v1" in reason
    assert promotion.current(run.storage, run.containers.models) == "v-window"
    assert len(_index(run, "v-sub")) == 2  # registered as trained, for whoever wants to look; not production


def test_promotion_refused_when_production_moved_since_the_evaluation(landed, tmp_path):
    run = _fresh(landed, tmp_path)
    policy = promotion.Policy()
    train_locally(run, PARAMS, policy, version="v-a")
    train_locally(run, {**PARAMS, "promote": False}, policy, version="v-b")
    sub = train_locally(run, {**PARAMS, "devices": ["dev-0000"], "promote": False}, policy, version="v-sub")
    assert not sub["promoted"] and "promote param is off" in str(sub["reason"])
    promotion.move_alias(run.storage, run.containers.models, "v-b", action="promote", reason="test", by="test")
    from sensor_scoring.steps.training import promote_or_not

    outcome = promote_or_not(run, "v-sub", promote=True)
    assert not outcome["promoted"] and "production moved from v-a to v-b" in str(outcome["reason"])


@pytest.fixture(scope="module")
def trained() -> list[fitting.TrainedModel]:
    return fitting.train_models(fleet_windows(devices=1, tags=2, hours=1))


def test_rollback_walks_back_the_promotion_path_never_forward(tmp_path, trained):
    storage = LocalStorage(str(tmp_path))
    for name in ("v1", "v2", "v3"):
        registry.register(storage, "models", trained, version=name, params={}, promote=False)
        promotion.move_alias(storage, "models", name, action="promote", reason="test", by="test")
    assert promotion.rollback(storage, "models", by="test")["version"] == "v2"
    assert promotion.rollback(storage, "models", by="test")["version"] == "v1"  # further back, not forward to v3
    with pytest.raises(LookupError, match=r"no earlier version on its promotion path \(v1\)"):
        promotion.rollback(storage, "models", by="test")
    assert promotion.current(storage, "models") == "v1"
    # a promotion after the rollbacks starts from where the path is now
    registry.register(storage, "models", trained, version="v4", params={}, promote=False)
    promotion.move_alias(storage, "models", "v4", action="promote", reason="test", by="test")
    assert promotion.production_stack(storage, "models") == ["v1", "v4"]
    assert promotion.rollback(storage, "models", by="test")["version"] == "v1"


def test_a_version_promoted_without_a_recorded_move_is_on_the_path(tmp_path, trained):
    storage = LocalStorage(str(tmp_path))
    registry.register(storage, "models", trained, version="v0", params={}, promote=True)  # no history written
    registry.register(storage, "models", trained, version="v1", params={}, promote=False)
    promotion.move_alias(storage, "models", "v1", action="promote", reason="test", by="test")
    assert promotion.production_stack(storage, "models") == ["v0", "v1"]
    assert promotion.rollback(storage, "models", by="test")["version"] == "v0"


def test_two_versions_rolled_back_twice_refuse_instead_of_going_forward(tmp_path, trained):
    storage = LocalStorage(str(tmp_path))
    for name in ("v1", "v2"):
        registry.register(storage, "models", trained, version=name, params={}, promote=False)
        promotion.move_alias(storage, "models", name, action="promote", reason="test", by="test")
    assert promotion.rollback(storage, "models", by="test")["version"] == "v1"
    with pytest.raises(LookupError, match="no earlier version"):
        promotion.rollback(storage, "models", by="test")  # was v2 -> v1 -> v2
    assert promotion.current(storage, "models") == "v1"
    assert promotion.rollback(storage, "models", "v2", by="test")["version"] == "v2"  # named: anywhere registered


def test_a_model_of_another_width_is_refused_at_load(tmp_path, trained, monkeypatch):
    from sensor_scoring.models import pack

    monkeypatch.setattr(pack, "PACK_SIZE", 1)  # a pack's models share a width: the narrow one has a pack of its own
    storage = LocalStorage(str(tmp_path))
    narrow = dataclasses.replace(trained[0].arrays)
    narrow.mean, narrow.scale = narrow.mean[:-1].copy(), narrow.scale[:-1].copy()
    narrow.support_vectors = narrow.support_vectors[:, :-1].copy()
    models = [dataclasses.replace(trained[0], arrays=narrow), *trained[1:]]
    registry.register(storage, "models", models, version="v1", params={}, promote=False)
    loaded, refused = registry.load_models(storage, "models", "v1", registry.read_index(storage, "models", "v1"))
    assert refused == {(trained[0].device_id, trained[0].tag): "model_unreadable"}
    assert sorted(loaded) == [(m.device_id, m.tag) for m in trained[1:]]


def test_manifests_and_verdicts_are_typed_records_and_old_ones_still_read(tmp_path, trained):
    import json

    from sensor_scoring.contracts import RegistryError

    storage = LocalStorage(str(tmp_path))
    written = registry.register(storage, "models", trained, version="v1", params={"nu": 0.02}, promote=False)
    record = registry.read_version_manifest(storage, "models", "v1")
    assert written["schema_version"] == 1 and record.models == len(trained) and record.index.file == "models.parquet"
    assert record.packs[0].models == len(trained) and record.lineage is None

    # a manifest from before manifests were versioned, without feature set columns or lineage: read as it was
    old = json.loads(storage.read_bytes("models", "versions/v1/manifest.json"))
    for key in ("schema_version", "feature_columns", "lineage"):
        old.pop(key)
    old["features"] = ["value_avg", "value_min", "value_max", "value_std", "reading_count"]
    storage.write_bytes("models", "versions/v1/manifest.json", json.dumps(old).encode())
    assert registry.read_version_manifest(storage, "models", "v1").features == old["features"]
    assert registry.version_features(registry.read_manifest(storage, "models", "v1")) == "window-v1"

    storage.write_bytes("models", "versions/v1/manifest.json", json.dumps({**old, "modles": 3}).encode())
    with pytest.raises(RegistryError, match="unknown field.*'modles'"):
        registry.read_manifest(storage, "models", "v1")
    storage.write_bytes("models", "versions/v1/manifest.json", json.dumps({**old, "models": "two"}).encode())
    with pytest.raises(RegistryError, match="field 'models' should be an integer"):
        registry.read_manifest(storage, "models", "v1")

    metrics = {
        "windows": 10,
        "flagged": 1,
        "flagged_share": 0.1,
        "labelled": 0,
        "anomalous": 0,
        "precision": None,
        "recall": None,
        "f1": None,
    }
    before_coverage = {
        "held_back_windows": 10,
        "labelled_hours": [],
        "candidate_all": metrics,
        "candidate": metrics,
        "production": None,
        "production_version": None,
        "policy": {"max_f1_drop": 0.0, "min_flagged_share": 0.0, "max_flagged_share": 0.1},
        "promotable": True,
        "reasons": [],
    }
    verdict = promotion.GateVerdict.from_dict(before_coverage, source="an old manifest")
    assert verdict.coverage is None and verdict.policy == promotion.Policy()
    from sensor_scoring.contracts import ContractError

    with pytest.raises(ContractError, match="field 'candidate.flagged' is missing"):
        promotion.GateVerdict.from_dict(
            {**before_coverage, "candidate": {k: v for k, v in metrics.items() if k != "flagged"}}, source="x"
        )
