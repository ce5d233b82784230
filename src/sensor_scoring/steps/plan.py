"""plan_shards: group the hour's sensors into shards and stage one input and one spec per shard."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from sensor_scoring import layout, models, storage as st
from sensor_scoring.contracts import (
    QUARANTINE_SCHEMA,
    REASON_COLUMN,
    ModelRef,
    PlannedShard,
    ShardContainers,
    ShardPlan,
    ShardSpec,
)
from sensor_scoring.steps.common import names_storage_outages, quarantine_frame
from sensor_scoring.steps.interval import Hour

log = logging.getLogger(__name__)

_MODEL_COLUMNS = ["device_id", "tag", "pack", "row", "sha256"]


@names_storage_outages
def plan_shards(hour: Hour, *, model_version: str, sensors_per_shard: int) -> list[PlannedShard]:
    """Group sensors with a model into shards of ``sensors_per_shard``, one input blob and spec per shard.

    Reads the windows load_and_validate staged. Sensors without a model in the chosen version are quarantined
    as ``no_model``. Returns one small record per shard (spec URI and a label for the UI): that list is what
    the DAG maps over.
    """
    if sensors_per_shard < 1:
        raise ValueError("sensors_per_shard must be at least 1")
    run, staging = layout.Run(hour.run_key), hour.containers.staging
    valid = st.read_parquet(hour.storage, staging, run.valid)
    version = models.resolve_version(hour.storage, hour.containers.models, model_version)
    index = models.read_index(hour.storage, hour.containers.models, version)
    sensors = valid[["device_id", "tag"]].drop_duplicates().sort_values(["device_id", "tag"])
    joined = sensors.merge(index[_MODEL_COLUMNS], on=["device_id", "tag"], how="left")
    has_model = joined["pack"].notna()
    orphans = valid.merge(joined.loc[~has_model, ["device_id", "tag"]], on=["device_id", "tag"])
    rejected = quarantine_frame(orphans.assign(**{REASON_COLUMN: "no_model"}), hour.run_id)
    hour.storage.write_bytes(staging, run.plan_quarantine, st.parquet_bytes(rejected, QUARANTINE_SCHEMA))
    hour.storage.write_bytes(staging, run.plan, ShardPlan(model_version=version).to_json())
    modelled = joined.loc[has_model].reset_index(drop=True)
    modelled["row"] = modelled["row"].astype("int64")
    modelled["shard"] = np.arange(len(modelled)) // sensors_per_shard
    # one pass over the hour: every window learns its shard, then each shard's rows are one group
    with_shard = valid.merge(modelled[["device_id", "tag", "shard"]], on=["device_id", "tag"])
    rows_by_shard = dict(iter(with_shard.groupby("shard")))
    shards = [
        _stage_shard(hour, run, int(number), members, rows_by_shard[number].drop(columns="shard"), version)
        for number, members in modelled.groupby("shard", sort=True)
    ]
    log.info(
        "Model version %s: %d sensor(s) in %d shard(s) of up to %d; %d sensor(s) without a model "
        "(%d windows quarantined)",
        version,
        len(modelled),
        len(shards),
        sensors_per_shard,
        int((~has_model).sum()),
        len(orphans),
    )
    return shards


def _stage_shard(
    hour: Hour, run: layout.Run, number: int, members: pd.DataFrame, rows: pd.DataFrame, version: str
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
