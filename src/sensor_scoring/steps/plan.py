"""plan_shards: decide the run's read groups and shards, and stage a spec for each: no window is read here.

Sensors with a model in the chosen version are grouped into shards (``shard_numbers``: of ``sensors_per_shard``
sensors each, or sized to the work) and written to the run's routing table; every other sensor's windows go to
the shard of its slot (``steps.load.route``) and are quarantined there as ``no_model``. The landed files are
listed and grouped by size (``steps.load.stage_reads``). The task returns both lists, which the DAG maps over:
``read_windows`` per group, then ``score_shard`` per shard.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from sensor_scoring import layout, storage as st
from sensor_scoring.contracts import (
    ModelRef,
    PlannedShard,
    RunPlan,
    ShardContainers,
    ShardPlan,
    ShardSpec,
)
from sensor_scoring.models import registry
from sensor_scoring.names import check_sensor_names
from sensor_scoring.runs.common import names_storage_outages
from sensor_scoring.runs.fence import read_generations
from sensor_scoring.runs.rescoring import select_sensors, subset_of
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps.load import list_range, stage_reads

log = logging.getLogger(__name__)

_MODEL_COLUMNS = ["device_id", "tag", "pack", "row", "sha256"]
#: Windows a sensor lands per hour (one a minute): how shards are sized before anything is read.
WINDOWS_PER_SENSOR_HOUR = 60

# Shards sized to the work (``sensors_per_shard`` None): a shard's cost is its windows x its models' support vectors
# (what the kernel's time grows with). As few shards as keep each below MAX_SHARD_COST (while at most MAX_SHARDS
# tasks: each pays Airflow's task start, seconds) and below MAX_SHARD_WINDOWS windows, however many tasks that
# takes: a shard's memory is set by its windows, never by the hour's. 1k sensors x 60 windows is one shard, 100k 24.
#: At most this many mapped tasks per run for the kernel's cost alone.
MAX_SHARDS = 64
#: Windows x support vectors above which a shard is split, as long as MAX_SHARDS allows.
MAX_SHARD_COST = 200_000_000
#: Windows per shard above which it is always split: bounds a shard's memory.
MAX_SHARD_WINDOWS = 250_000


@names_storage_outages
def plan_shards(
    scope: Scope,
    *,
    model_version: str,
    sensors_per_shard: int | None = None,
    late_folders: int = 1,
    devices: list[str] | None = None,
    tags: list[str] | None = None,
) -> RunPlan:
    """Resolve the model version, route its sensors into shards, list and group the landed files, and stage one
    spec per read group and per shard (and the run's ``ShardPlan`` for commit). Returns what the DAG maps over.

    The run's staging folder is emptied first: a re-planned run never meets the parts of an earlier plan. With
    ``devices``/``tags`` (a rescoring subset) only those sensors are read and scored.
    """
    if sensors_per_shard is not None and sensors_per_shard < 1:
        raise ValueError("sensors_per_shard must be at least 1 (or None: sized to the work)")
    devices, tags = check_sensor_names(devices, "devices"), check_sensor_names(tags, "tags")
    subset = subset_of(devices, tags)
    generations = read_generations(scope)  # before any window is listed: what commit is fenced on
    storage, staging, run = scope.storage, scope.containers.staging, layout.Run(scope.run_key)
    version = registry.resolve_version(storage, scope.containers.models, model_version)
    index = registry.read_index(storage, scope.containers.models, version)
    modelled = select_sensors(index, devices, tags).sort_values(["device_id", "tag"]).reset_index(drop=True)
    windows = np.full(len(modelled), WINDOWS_PER_SENSOR_HOUR * len(scope.hours), dtype="int64")
    support = modelled["support_vectors"] if "support_vectors" in modelled else pd.Series(1, index=modelled.index)
    cost = windows * support.fillna(1).to_numpy(dtype="int64")
    modelled["shard"] = shard_numbers(windows, cost, sensors_per_shard)
    shards = int(modelled["shard"].max()) + 1 if len(modelled) else 1
    storage.delete_prefix(staging, run.prefix)
    storage.write_bytes(staging, run.routing, st.parquet_bytes(modelled[["device_id", "tag", "shard"]]))
    listing = list_range(scope, late_folders)
    reads = stage_reads(scope, listing, shards=shards, routing=st.make_uri(staging, run.routing), subset=subset)
    members = dict(iter(modelled.groupby("shard", sort=True)))
    planned = [
        _stage_shard(scope, run, number, members.get(number, modelled.iloc[:0]), version) for number in range(shards)
    ]
    read_tasks = tuple(
        PlannedShard(
            spec_uri=st.make_uri(staging, run.read(spec.group).spec),
            shard=spec.group,
            sensors=0,
            windows=0,
            label=f"files {spec.group}: {len(spec.files)} file(s)",
        )
        for spec in reads
    )
    plan = ShardPlan(
        model_version=version,
        folders=listing.folders,
        generations=generations,
        subset=subset,
        reads=read_tasks,
        shards=shards,
    )
    storage.write_bytes(staging, run.plan, plan.to_json())
    log.info(
        "Model version %s: %d sensor(s) with a model in %d shard(s) (%s); %d file(s) in %s, read in %d group(s)",
        version,
        len(modelled),
        shards,
        f"of up to {sensors_per_shard} sensors" if sensors_per_shard else "sized to windows x support vectors",
        len(listing.files),
        ", ".join(listing.folders),
        len(reads),
    )
    return RunPlan(reads=read_tasks, shards=tuple(planned))


def planned_reads(scope: Scope) -> list[PlannedShard]:
    """The read tasks plan_shards staged for the run (the DAG maps read_windows over them: Airflow maps over a
    task's return value only, so they reach the DAG through a task of their own)."""
    staging, run = scope.containers.staging, layout.Run(scope.run_key)
    plan = ShardPlan.from_json(scope.storage.read_bytes(staging, run.plan), source=st.make_uri(staging, run.plan))
    return list(plan.reads)


def _stage_shard(scope: Scope, run: layout.Run, number: int, members: pd.DataFrame, version: str) -> PlannedShard:
    """Write one shard's spec: its input folder (the read tasks fill it), its models and its output folder."""
    staging, shard = scope.containers.staging, run.shard(number)
    spec = ShardSpec(
        run_id=scope.run_id,
        run_key=scope.run_key,
        shard=number,
        model_version=version,
        containers=ShardContainers(models=scope.containers.models, staging=staging),
        input=st.make_uri(staging, shard.input),
        output_prefix=st.make_uri(staging, shard.folder),
        models=tuple(
            ModelRef(device_id=str(m.device_id), tag=str(m.tag), pack=str(m.pack), row=int(m.row), sha256=str(m.sha256))
            for m in members[_MODEL_COLUMNS].itertuples(index=False)
        ),
        start=scope.start,
        end=scope.end,
    )
    scope.storage.write_bytes(staging, shard.spec, spec.to_json())
    return PlannedShard(
        spec_uri=st.make_uri(staging, shard.spec),
        shard=number,
        sensors=len(members),
        windows=len(members) * WINDOWS_PER_SENSOR_HOUR * len(scope.hours),
        label=shard_label(number, members),
    )


def shard_label(number: int, members: pd.DataFrame) -> str:
    """Name of a mapped task instance in the UI: the sensors it scores."""
    if not len(members):
        return f"shard {number}: sensors without a model"
    first = f"{members.iloc[0]['device_id']}/{members.iloc[0]['tag']}"
    if len(members) == 1:
        return first
    last = f"{members.iloc[-1]['device_id']}/{members.iloc[-1]['tag']}"
    return f"shard {number}: {first} .. {last} ({len(members)} sensors)"


def shard_numbers(windows: np.ndarray, cost: np.ndarray, sensors_per_shard: int | None) -> np.ndarray:
    """The shard of each sensor (in plan order): every ``sensors_per_shard`` sensors, or, with None, contiguous runs
    of sensors of about equal weight, as many as the bounds above ask for.

    A sensor's weight is the larger of its share of a shard's cost (the run's cost over the shards the cost asks
    for, at most MAX_SHARDS) and its share of MAX_SHARD_WINDOWS: a run of weight at most 1 keeps both bounds, so
    cheap sensors never pile their windows into one shard past the windows bound, whatever the models' costs."""
    count = len(cost)
    if sensors_per_shard is not None:
        return np.arange(count) // sensors_per_shard
    if count == 0:
        return np.zeros(0, dtype="int64")
    total = float(cost.sum())
    by_cost = max(min(math.ceil(total / MAX_SHARD_COST), MAX_SHARDS), 1)
    weight = np.maximum(cost / max(total / by_cost, 1.0), windows / MAX_SHARD_WINDOWS)
    whole = float(weight.sum())
    shards = int(min(max(math.ceil(whole - 1e-9), 1), count))
    before = np.cumsum(weight) - weight  # weight of the sensors ahead of each one
    numbers = np.minimum((before / max(whole, 1e-12) * shards).astype("int64"), shards - 1)
    return np.unique(numbers, return_inverse=True)[1].astype("int64")  # no gaps when one sensor spans shards
