"""Small builders shared by tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour
from sensor_scoring.windows import aggregate_readings

START = datetime(2026, 11, 24, 0, tzinfo=timezone.utc)


def fleet_windows(
    devices: int = 2, tags: int = 2, hours: int = 2, start: datetime = START, seed: int = 0
) -> pd.DataFrame:
    """Simulated windows for ``hours`` hours from ``start``."""
    cfg = SimulationConfig(devices=devices, tags=tags, seed=seed)
    return pd.concat(
        [aggregate_readings(simulate_hour(cfg, start + timedelta(hours=h))[0]) for h in range(hours)],
        ignore_index=True,
    )


def planned_hour(storage, containers, run_id: str, *, devices: int, tags: int, sensors_per_shard: int):
    """A real hour made ready to score: three hours landed, models ``v1`` trained and promoted, and the third
    hour validated and planned. Returns the ``Scope`` and its shards, as the DAG's mapped task would get them."""
    from sensor_scoring.models import fitting, registry
    from sensor_scoring.runs.scope import Scope
    from sensor_scoring.windows import land_windows

    windows = fleet_windows(devices=devices, tags=tags, hours=3)
    land_windows(storage, containers.windows, windows)
    registry.register(storage, containers.models, fitting.train_models(windows), version="v1", params={}, promote=True)
    hour = Scope(storage, containers, run_id, START + timedelta(hours=2), START + timedelta(hours=3))
    _, shards = read_and_plan(hour, sensors_per_shard=sensors_per_shard)
    return hour, [shard.to_dict() for shard in shards]  # the XCom form, what ShardOperator is given


def read_and_plan(hour, *, model_version: str = "production", **params):
    """The DAG's steps before scoring, in-process: plan_shards, then every read_windows. Returns the read results
    and the planned shards (``params``: plan_shards' sensors_per_shard, late_folders, devices, tags)."""
    from sensor_scoring.steps.load import read_windows
    from sensor_scoring.steps.plan import plan_shards

    plan = plan_shards(hour, model_version=model_version, **params)
    return [read_windows(hour.storage, r.spec_uri) for r in plan.reads], list(plan.shards)


def run_steps(hour, *, model_version: str = "production", commit_params: dict | None = None, **params):
    """The DAG's steps for a run, in-process: plan_shards -> read_windows* -> score_shard* -> commit; the
    manifests. ``commit_params``: commit's max_quarantine_share, purged_windows."""
    from sensor_scoring.steps.commit import commit
    from sensor_scoring.steps.score import score_shard

    reads, shards = read_and_plan(hour, model_version=model_version, **params)
    results = [score_shard(hour.storage, s.spec_uri) for s in shards]
    return commit(hour, reads, results, **(commit_params or {}))


def sample_manifest(hour: datetime = START, *, anomalies: int = 0, run_id: str = "run-1"):
    """A committed hour's manifest as commit returns it, with ``anomalies`` among 60 scored windows."""
    from sensor_scoring.contracts import Counts, Interval, Manifest, ValidationSummary

    return Manifest(
        run_id=run_id,
        model_version="v1",
        hour=hour,
        interval=Interval(start=hour, end=hour + timedelta(hours=1)),
        committed_at=hour + timedelta(hours=1, minutes=5),
        counts=Counts(landed=60, scored=60, quarantined=0, duplicates=0, anomalies=anomalies),
        quarantine_reasons={},
        files=(),
        source_folders=(f"{hour:%Y/%m/%d/%H}",),
        status="scored",
        quarantined_files=(),
        empty_files=(),
        validation=ValidationSummary(
            suite="landed_windows",
            report="az://quarantine/_validation.json",
            failing_rows=0,
            failing_share=0.0,
            failing_rows_by_reason={},
            max_quarantine_share=0.1,
        ),
        subset=None,
        rescored=(),
        model_versions={"v1": 60},
        duplicates_by_sensor=(),
    )


def key_use(requests: list[dict]) -> list[str]:
    """Every request of ``requests`` (Azurite's debug log: :meth:`dev.azurite.Azurite.requests`) that used the
    account key: a SharedKey header or a key-signed SAS (a ``sig`` without the user-delegation ``skoid``)."""
    found = []
    for request in requests:
        auth = str(request["headers"].get("authorization", ""))
        query = parse_qs(urlsplit(request["url"]).query)
        if auth.lower().startswith("sharedkey"):
            found.append(f"SharedKey: {request['method']} {request['url']}")
        elif "sig" in query and "skoid" not in query:
            found.append(f"key-signed SAS: {request['method']} {request['url'].split('?')[0]}")
    return found
