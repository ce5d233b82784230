"""plan_shards: group the hour's sensors into shards and stage one input and one spec per shard."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from sensor_scoring import layout, storage as st
from sensor_scoring.contracts import (
    QUARANTINE_SCHEMA,
    REASON_COLUMN,
    ModelRef,
    PlannedShard,
    ShardContainers,
    ShardPlan,
    ShardSpec,
)
from sensor_scoring.models import registry
from sensor_scoring.runs.common import names_storage_outages, quarantine_frame
from sensor_scoring.runs.scope import Scope

log = logging.getLogger(__name__)

_MODEL_COLUMNS = ["device_id", "tag", "pack", "row", "sha256"]

# Shards sized to the work (``sensors_per_shard`` None): a shard's cost is its windows x its models' support vectors
# (what the kernel's time grows with). As few shards as keep each below MAX_SHARD_COST and MAX_SHARD_WINDOWS
# windows (its memory stays bounded whatever the hour's size), and never more than MAX_SHARDS mapped tasks (each
# pays Airflow's task start, seconds): 1k sensors x 60 windows is one shard, 100k sensors 24.
#: At most this many mapped tasks per run when sized automatically.
MAX_SHARDS = 64
#: Windows x support vectors above which a shard is split, as long as MAX_SHARDS allows.
MAX_SHARD_COST = 200_000_000
#: Windows per shard above which it is split, as long as MAX_SHARDS allows: bounds a shard's memory.
MAX_SHARD_WINDOWS = 250_000


@names_storage_outages
def plan_shards(hour: Scope, *, model_version: str, sensors_per_shard: int | None = None) -> list[PlannedShard]:
    """Group sensors with a model into shards, one input blob and spec per shard: of ``sensors_per_shard``
    sensors each, or by default (None) sized to the work (:func:`shard_numbers`).

    Reads the windows load_and_validate staged. Sensors without a model in the chosen version are quarantined
    as ``no_model``. Returns one small record per shard (spec URI and a label for the UI): that list is what
    the DAG maps over.
    """
    if sensors_per_shard is not None and sensors_per_shard < 1:
        raise ValueError("sensors_per_shard must be at least 1 (or None: sized to the work)")
    run, staging = layout.Run(hour.run_key), hour.containers.staging
    valid = st.read_parquet(hour.storage, staging, run.valid)
    version = registry.resolve_version(hour.storage, hour.containers.models, model_version)
    index = registry.read_index(hour.storage, hour.containers.models, version)
    sensors = valid[["device_id", "tag"]].drop_duplicates().sort_values(["device_id", "tag"])
    extra = ["support_vectors"] if "support_vectors" in index else []
    joined = sensors.merge(index[_MODEL_COLUMNS + extra], on=["device_id", "tag"], how="left")
    has_model = joined["pack"].notna()
    orphans = valid.merge(joined.loc[~has_model, ["device_id", "tag"]], on=["device_id", "tag"])
    rejected = quarantine_frame(orphans.assign(**{REASON_COLUMN: "no_model"}), hour.run_id)
    hour.storage.write_bytes(staging, run.plan_quarantine, st.parquet_bytes(rejected, QUARANTINE_SCHEMA))
    hour.storage.write_bytes(staging, run.plan, ShardPlan(model_version=version).to_json())
    modelled = joined.loc[has_model].reset_index(drop=True)
    modelled["row"] = modelled["row"].astype("int64")
    windows = valid.groupby(["device_id", "tag"]).size().rename("windows").reset_index()
    modelled = modelled.merge(windows, on=["device_id", "tag"], how="left", sort=False)
    support = modelled["support_vectors"] if "support_vectors" in modelled else pd.Series(1, index=modelled.index)
    cost = modelled["windows"].to_numpy(dtype="int64") * support.fillna(1).to_numpy(dtype="int64")
    modelled["shard"] = shard_numbers(modelled["windows"].to_numpy(dtype="int64"), cost, sensors_per_shard)
    # one pass over the hour: every window learns its shard, then each shard's rows are one group
    with_shard = valid.merge(modelled[["device_id", "tag", "shard"]], on=["device_id", "tag"])
    rows_by_shard = dict(iter(with_shard.groupby("shard")))
    shards = [
        _stage_shard(hour, run, int(number), members, rows_by_shard[number].drop(columns="shard"), version)
        for number, members in modelled.groupby("shard", sort=True)
    ]
    log.info(
        "Model version %s: %d sensor(s) in %d shard(s) (%s); %d sensor(s) without a model (%d windows quarantined)",
        version,
        len(modelled),
        len(shards),
        f"of up to {sensors_per_shard} sensors" if sensors_per_shard else "sized to windows x support vectors",
        int((~has_model).sum()),
        len(orphans),
    )
    return shards


def _stage_shard(
    hour: Scope, run: layout.Run, number: int, members: pd.DataFrame, rows: pd.DataFrame, version: str
) -> PlannedShard:
    """Write one shard's input and spec; the spec names everything the shard process needs."""
    staging, shard = hour.containers.staging, run.shard(number)
    hour.storage.write_bytes(staging, shard.input, st.parquet_bytes(rows))
    spec = ShardSpec(
        run_id=hour.run_id,
        run_key=hour.run_key,
        shard=number,
        model_version=version,
        containers=ShardContainers(models=hour.containers.models, staging=staging),
        input=st.make_uri(staging, shard.input),
        output_prefix=st.make_uri(staging, shard.folder),
        models=tuple(
            ModelRef(device_id=str(m.device_id), tag=str(m.tag), pack=str(m.pack), row=int(m.row), sha256=str(m.sha256))
            for m in members[_MODEL_COLUMNS].itertuples(index=False)
        ),
    )
    hour.storage.write_bytes(staging, shard.spec, spec.to_json())
    return PlannedShard(
        spec_uri=st.make_uri(staging, shard.spec),
        shard=number,
        sensors=len(members),
        windows=len(rows),
        label=shard_label(number, members),
    )


def shard_label(number: int, members: pd.DataFrame) -> str:
    """Name of a mapped task instance in the UI: the sensors it scores."""
    first = f"{members.iloc[0]['device_id']}/{members.iloc[0]['tag']}"
    if len(members) == 1:
        return first
    last = f"{members.iloc[-1]['device_id']}/{members.iloc[-1]['tag']}"
    return f"shard {number}: {first} .. {last} ({len(members)} sensors)"


def shard_numbers(windows: np.ndarray, cost: np.ndarray, sensors_per_shard: int | None) -> np.ndarray:
    """The shard of each sensor (in plan order): every ``sensors_per_shard`` sensors, or, with None, contiguous runs
    of sensors of about equal cost, as many as the bounds above ask for."""
    count = len(cost)
    if sensors_per_shard is not None:
        return np.arange(count) // sensors_per_shard
    if count == 0:
        return np.zeros(0, dtype="int64")
    total = float(cost.sum())
    wanted = max(total / MAX_SHARD_COST, windows.sum() / MAX_SHARD_WINDOWS)
    shards = int(min(max(np.ceil(wanted), 1), MAX_SHARDS, count))
    before = np.cumsum(cost) - cost  # cost of the sensors ahead of each one
    numbers = np.minimum((before / max(total, 1.0) * shards).astype("int64"), shards - 1)
    return np.unique(numbers, return_inverse=True)[1].astype("int64")  # no gaps when one sensor spans shards
