"""Partial hours: commit what scored when some shards failed after their last retry.

Why: one node that keeps failing should not hold back the whole fleet's predictions. With the DAG param
``max_failed_shard_share`` above 0, commit takes the shards that scored, quarantines the failed shards' windows as
``shard_failed`` (so landed = scored + quarantined + duplicates still holds), marks the hour ``partial`` with the
failed shards named, and keeps the run's staging, so clearing the failed shard (and commit after it) or re-running
the hour fills the partition in to ``scored``. Airflow-free: the DAG's commit task says which shards failed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import pandas as pd

from sensor_scoring import layout, storage as st
from sensor_scoring.contracts import REASON_COLUMN, SHARD_FAILED, Counts, FailedShard, Manifest, PlannedShard
from sensor_scoring.steps.common import quarantine_frame
from sensor_scoring.steps.interval import Hour

log = logging.getLogger(__name__)


class TooManyFailedShards(RuntimeError):
    """More shards failed than ``max_failed_shard_share`` allows: nothing is committed."""


def check_failed_share(planned: int, failed: Sequence[PlannedShard], max_share: float) -> None:
    """Refuse the hour when the failed shards are more than ``max_share`` of the planned ones (0: any failure)."""
    if not 0 <= max_share <= 1:
        raise ValueError(f"max_failed_shard_share must be between 0 and 1, not {max_share}")
    if not failed:
        return
    share = len(failed) / planned if planned else 1.0
    if share > max_share:
        named = ", ".join(str(s.shard) for s in failed[:10]) + (" ..." if len(failed) > 10 else "")
        raise TooManyFailedShards(
            f"{len(failed)} of {planned} shard(s) failed after their last retry (share {share:.3f} > "
            f"max_failed_shard_share {max_share}): shard(s) {named}; nothing committed. Clear the failed shards to "
            f"retry them, or re-run with a higher max_failed_shard_share to commit the hour as partial"
        )


def failed_shard_quarantine(hour: Hour, failed: Sequence[PlannedShard]) -> pd.DataFrame:
    """The staged windows of every failed shard, as quarantine rows with reason ``shard_failed``."""
    storage, staging, run = hour.storage, hour.containers.staging, layout.Run(hour.run_key)
    frames = [st.read_parquet(storage, staging, run.shard(s.shard).input) for s in failed]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return quarantine_frame(rows.assign(**{REASON_COLUMN: SHARD_FAILED}), hour.run_id)


def failed_shard_records(failed: Sequence[PlannedShard]) -> tuple[FailedShard, ...]:
    """The failed shards as the manifest names them."""
    return tuple(
        FailedShard(shard=s.shard, label=s.label, sensors=s.sensors, windows=s.windows, spec=s.spec_uri)
        for s in sorted(failed, key=lambda s: s.shard)
    )


def hour_status(counts: Counts, q_rows: pd.DataFrame) -> Literal["scored", "empty", "partial"]:
    """``partial`` when a failed shard's windows are in the hour, else ``scored`` (``empty`` with none landed)."""
    if not counts.landed:
        return "empty"
    return "partial" if bool((q_rows[REASON_COLUMN] == SHARD_FAILED).any()) else "scored"


def log_partial(hour: Hour, failed: Sequence[PlannedShard]) -> None:
    log.warning(
        "Committed a PARTIAL run: %d shard(s) failed (%s); their windows are quarantined as %s and the run's "
        "staging %s is kept: clear the failed shard(s) and commit, or re-run the hour, to score them",
        len(failed),
        ", ".join(str(s.shard) for s in failed),
        SHARD_FAILED,
        st.make_uri(hour.containers.staging, layout.Run(hour.run_key).prefix),
    )


def superseded_staging(hour: Hour) -> list[str]:
    """The staging folders of earlier runs that committed one of these hours as partial (read before this run's
    manifests replace theirs): once this run commits, nobody will retry those runs' failed shards."""
    storage, containers, own = hour.storage, hour.containers, layout.Run(hour.run_key).prefix
    folders: set[str] = set()
    for h in hour.hours:
        path = layout.Partition(h).manifest
        if not storage.exists(containers.predictions, path):
            continue
        manifest = Manifest.from_json(
            storage.read_bytes(containers.predictions, path), source=st.make_uri(containers.predictions, path)
        )
        for failed in manifest.failed_shards:
            container, spec = st.parse_uri(failed.spec)
            run_folder = layout.Shard.of_spec(spec).folder.rstrip("/").rsplit("/", 1)[0] + "/"
            if container == containers.staging and run_folder != own:
                folders.add(run_folder)
    return sorted(folders)


def delete_superseded(hour: Hour, folders: Sequence[str]) -> None:
    for folder in folders:
        log.info("Deleting the staging of a superseded partial run: %s", folder)
        hour.storage.delete_prefix(hour.containers.staging, folder)
