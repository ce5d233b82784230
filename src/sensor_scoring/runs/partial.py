"""Partial hours: commit what scored when some shards failed after their last retry.

Why: one node that keeps failing should not hold back the whole fleet's predictions. With the DAG param
``max_failed_shard_share`` above 0, commit takes the shards that scored, quarantines the failed shards' windows as
``shard_failed`` (so landed = scored + quarantined + duplicates still holds), marks the hour ``partial`` with the
failed shards named, and keeps the run's staging, so clearing the failed shard (and commit after it) or re-running
the hour fills the partition in to ``scored``. Airflow-free: the DAG's commit task says which shards failed.

A partial hour keeps its way back whatever runs beside it: a later run that leaves the failed shard's windows as
they were (a subset rescoring of other sensors, a re-run that did not find them) names the earlier run's failed
shards in its manifest too (``named_failed_shards``), and a run's staging is deleted only when no hour's manifest
names a spec in it any more (``release_staging``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import pandas as pd

from sensor_scoring import layout, storage as st
from sensor_scoring.contracts import (
    REASON_COLUMN,
    SHARD_FAILED,
    ContractError,
    Counts,
    FailedShard,
    Manifest,
    PlannedShard,
    ShardSpec,
    ValidationReport,
)
from sensor_scoring.runs.common import quarantine_frame, read_parts
from sensor_scoring.runs.scope import Scope, hours_of, run_key

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


def failed_shard_quarantine(hour: Scope, failed: Sequence[PlannedShard]) -> pd.DataFrame:
    """The staged windows of every failed shard, as quarantine rows with reason ``shard_failed``."""
    storage, staging, run = hour.storage, hour.containers.staging, layout.Run(hour.run_key)
    frames = []
    for s in failed:  # every landed row routed to the shard (the reader's rejected rows too), never checked
        parts = read_parts(storage, staging, run.shard(s.shard).input, ("landed", "rejected"))
        frames += [f.drop(columns=[REASON_COLUMN], errors="ignore") for f in parts.values() if len(f)]
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


def log_partial(hour: Scope, failed: Sequence[PlannedShard]) -> None:
    log.warning(
        "Committed a PARTIAL run: %d shard(s) failed (%s); their windows are quarantined as %s and the run's "
        "staging %s is kept: clear the failed shard(s) and commit, or re-run the hour, to score them",
        len(failed),
        ", ".join(str(s.shard) for s in failed),
        SHARD_FAILED,
        st.make_uri(hour.containers.staging, layout.Run(hour.run_key).prefix),
    )


def named_failed_shards(
    hour: Scope, own: Sequence[FailedShard], previous: Manifest | None, q_rows: pd.DataFrame
) -> tuple[FailedShard, ...]:
    """The failed shards a partial hour's manifest names: this run's, and those of earlier runs whose
    ``shard_failed`` rows this run kept as they were (outside its subset, or not found again), so they stay named
    until each is filled in. A shard whose spec is gone is named while any row of its run is pending."""
    if previous is None or not previous.failed_shards:
        return tuple(own)
    pending = q_rows.loc[q_rows[REASON_COLUMN] == SHARD_FAILED, ["device_id", "tag", "run_id"]]
    folders = {r: layout.staging_prefix(run_key(str(r))) for r in pending["run_id"].dropna().unique()}
    pending_folder = pending["run_id"].map(folders)
    own_folder = layout.Run(hour.run_key).prefix
    carried = []
    for failed in previous.failed_shards:
        folder = _run_folder(failed.spec)
        if folder == own_folder or failed in own:
            continue
        rows = pending.loc[(pending_folder == folder).to_numpy(dtype=bool)]
        sensors = _spec_sensors(hour, failed.spec)
        if sensors is not None:
            rows = rows.loc[[(d, t) in sensors for d, t in zip(rows["device_id"], rows["tag"])]]
        if len(rows):
            carried.append(failed)
    return (*own, *carried)


def _run_folder(spec_uri: str) -> str:
    """``runs/<run key>/`` of a shard's spec URI."""
    _, spec = st.parse_uri(spec_uri)
    return layout.Shard.of_spec(spec).folder.rstrip("/").rsplit("/", 1)[0] + "/"


def _spec_sensors(hour: Scope, spec_uri: str) -> set[tuple[str, str]] | None:
    """The sensors a failed shard scores, from its kept spec; None if the spec is gone or unreadable."""
    try:
        spec = ShardSpec.from_json(hour.storage.read_bytes(*st.parse_uri(spec_uri)), source=spec_uri)
    except (FileNotFoundError, ContractError, ValueError):
        return None
    return {(m.device_id, m.tag) for m in spec.models}


def superseded_staging(hour: Scope) -> list[str]:
    """The staging folders of earlier runs named by a failed shard in one of these hours' manifests (read before
    this run's manifests replace theirs): candidates for deletion once this run has committed."""
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
            container, _ = st.parse_uri(failed.spec)
            run_folder = _run_folder(failed.spec)
            if container == containers.staging and run_folder != own:
                folders.add(run_folder)
    return sorted(folders)


def release_staging(hour: Scope, folders: Sequence[str]) -> None:
    """Delete each run's staging folder unless a committed manifest still names one of its failed shards' specs:
    the hours of the folder's run (from its staged validation report) and this run's are checked."""
    for folder in folders:
        pointing = _hours_naming(hour, folder)
        if pointing:
            log.info(
                "Keeping the staging %s: hour(s) %s still name its failed shard(s); clear them or re-run the hour(s)",
                st.make_uri(hour.containers.staging, folder),
                ", ".join(h.isoformat() for h in pointing),
            )
            continue
        log.info("Deleting the staging %s: no committed hour names it any more", folder)
        hour.storage.delete_prefix(hour.containers.staging, folder)


def _hours_naming(hour: Scope, folder: str) -> list[datetime]:
    storage, containers = hour.storage, hour.containers
    hours = set(hour.hours)
    report = folder + "validation.json"
    try:
        interval = ValidationReport.from_json(storage.read_bytes(containers.staging, report), source=report).interval
        hours |= set(hours_of(interval.start, interval.end))
    except (FileNotFoundError, ContractError, ValueError):
        pass  # without the run's report only this run's hours are known
    naming = []
    for h in sorted(hours):
        try:
            body = json.loads(storage.read_bytes(containers.predictions, layout.Partition(h).manifest))
        except FileNotFoundError:
            continue
        except ValueError:
            naming.append(h)  # an unreadable manifest might name it: keep the staging
            continue
        shards = body.get("failed_shards") if isinstance(body, dict) else None
        if any(_names_folder(f, folder) for f in shards or ()):
            naming.append(h)
    return naming


def _names_folder(failed: object, folder: str) -> bool:
    """Whether a manifest's failed-shard entry points into ``folder`` (an unreadable entry might: True)."""
    try:
        return _run_folder(str(failed["spec"])) == folder  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return True
