"""The backend seam: the local backend runs the shard command; unknown and unbuilt backends say so."""
from __future__ import annotations

import pytest

from sensor_scoring import backends, settings as config, models
from sensor_scoring.steps.interval import Hour
from sensor_scoring.steps.load import load_and_validate
from sensor_scoring.steps.plan import plan_shards
from sensor_scoring.storage import LocalStorage
from sensor_scoring.windows import land_windows
from tests.support.helpers import START, fleet_windows


def test_local_backend_runs_the_shard_command_in_a_child_process(tmp_path, monkeypatch):
    storage = LocalStorage(tmp_path)
    windows = fleet_windows(devices=1, tags=2, hours=3)
    land_windows(storage, "windows", windows)
    models.register(storage, "models", models.train_models(windows), version="v1", params={}, promote=True)
    from datetime import timedelta

    hour = Hour(storage, config.Containers(), "r1", START + timedelta(hours=2), START + timedelta(hours=3))
    load_and_validate(hour)
    [shard] = plan_shards(hour, model_version="production", sensors_per_shard=5)
    result = backends.get_backend("local").run_shard(shard.spec_uri, storage_setting=str(tmp_path))
    assert result["scored"] == 120 and result["shard"] == 0
    assert storage.exists("staging", f"runs/{hour.run_key}/shard-00000/predictions.parquet")


def test_local_backend_fails_with_the_exit_code_and_output(tmp_path):
    with pytest.raises(backends.ShardFailed, match="exited with code 1.*spec.json"):
        backends.get_backend("local").run_shard("az://staging/missing/spec.json", storage_setting=str(tmp_path))


def test_shard_command_is_the_same_everywhere():
    assert backends.shard_command("az://s/x/spec.json") == ["python", "-m", "sensor_scoring", "score-shard", "--spec", "az://s/x/spec.json"]


def test_unknown_backends_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown backend 'spark'"):
        backends.get_backend("spark")
    assert backends.get_backend("azure_batch").name == "azure_batch"
