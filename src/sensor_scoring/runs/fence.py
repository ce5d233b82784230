"""Fenced commits: a run commits an hour only if nobody committed it since the run read it.

``plan_shards`` records, before any window is read, the generation (ETag on blob storage, the content's
hash on a directory) of each hour's committed predictions manifest (``ShardPlan.generations``). ``commit``
checks it before it writes the hour's partition (``check_fence``) and writes the manifest conditionally on it
(``write_fenced_manifest``: If-Match on blob storage, a lock on a directory), so two runs of one hour
(scheduled, manual, backfill, rescoring) can never leave a partition older than one already committed: the
run that read the older state fails with ``SupersededError`` "superseded by run X", commits nothing for that
hour, and loses nothing (every landed window is still in its folder for a re-run). A retry of the same run
(its own earlier try committed the hour) is not a conflict.

Two runs that read the *same* generation and commit at the same instant are told apart before either writes a
byte of the hour: each first claims the commit of that generation (``claim_commit``: a create-only blob in the
staging container, one per hour and generation), then checks the fence, and only the run whose claim was created
goes on. So the loser never replaces the winner's partition file, even where nothing else serialises the commits
(two deployments, the CLI beside the DAG). The claim is released when the commit ends (``release_claims``): a run
claiming that generation later finds the manifest moved on at its fence check. A claim whose commit died before
releasing it blocks other runs for ``CLAIM_TTL``, then may be taken over; the claiming run's own retry goes on at
once.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

from sensor_scoring import layout
from sensor_scoring.contracts import HourSummary, SupersededError
from sensor_scoring.runs.scope import Scope
from sensor_scoring.storage import GenerationMismatch

#: How long a claim whose run never wrote its manifest (a commit that died) keeps other runs from the hour.
CLAIM_TTL = timedelta(hours=1)

log = logging.getLogger(__name__)


def read_generations(hour: Scope) -> dict[str, str]:
    """The generation of each hour's committed manifest now ("" for an hour never committed)."""
    container = hour.containers.predictions
    return {h.isoformat(): hour.storage.generation(container, layout.Partition(h).manifest) or "" for h in hour.hours}


def _committed_by(hour: Scope, h: datetime) -> str:
    """The run that wrote the hour's manifest as it is now (``?`` if unreadable)."""
    try:
        body = json.loads(hour.storage.read_bytes(hour.containers.predictions, layout.Partition(h).manifest))
        return f"{body.get('run_id', '?')} (committed at {body.get('committed_at', '?')})"
    except (FileNotFoundError, ValueError, AttributeError):
        return "? (its manifest is gone or unreadable)"


def _own(hour: Scope, h: datetime) -> bool:
    try:
        body = json.loads(hour.storage.read_bytes(hour.containers.predictions, layout.Partition(h).manifest))
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(body, dict) and body.get("run_id") == hour.run_id


def hours_to_commit(hour: Scope, summary: HourSummary) -> list[datetime]:
    """The run's hours its commit writes: all of them, unless the run committed some already (a partial run whose
    failed shard is being retried) and another run has committed others since (a re-run of one hour, a subset
    rescoring). Those hours keep their newer partition and this commit fills in the hours the run still owns, so
    clearing a failed shard works whatever was re-run beside it. Any other run gets every hour, and a superseded
    one is refused by ``check_fence`` as before."""
    own, superseded = [], []
    for h in hour.hours:
        read = summary.generations.get(h.isoformat())
        if _own(hour, h):
            own.append(h)
        elif (
            read is not None
            and (hour.storage.generation(hour.containers.predictions, layout.Partition(h).manifest) or "") != read
        ):
            superseded.append(h)
    if not own or not superseded:
        return list(hour.hours)
    for h in superseded:
        log.warning(
            "Hour %s: committed by run %s since run %s committed it; left as it is (re-run the hour to rescore it)",
            h.isoformat(),
            _committed_by(hour, h),
            hour.run_id,
        )
    return [h for h in hour.hours if h not in superseded]


def check_fence(hour: Scope, summary: HourSummary, h: datetime) -> str | None:
    """The generation the hour's manifest must still have when commit writes it; ``SupersededError`` if another
    run committed the hour after this run read it. A summary without generations (an older XCom) is fenced from
    here on only."""
    current = hour.storage.generation(hour.containers.predictions, layout.Partition(h).manifest)
    read = summary.generations.get(h.isoformat())
    if read is None or (current or "") == read or _own(hour, h):
        return current
    raise SupersededError(
        f"hour {h.isoformat()}: superseded by run {_committed_by(hour, h)}, which committed it after run "
        f"{hour.run_id} read its windows; run {hour.run_id} committed nothing for this hour and nothing is lost "
        "(the landed windows are all still there): re-run the hour to score what has landed since"
    )


def write_fenced_manifest(hour: Scope, h: datetime, body: bytes, generation: str | None) -> None:
    """Write the predictions manifest only if it is still at ``generation``: the check and the write are one
    step on the storage, so a run committing in between is caught even inside ``commit``."""
    try:
        hour.storage.write_bytes_if(hour.containers.predictions, layout.Partition(h).manifest, body, generation)
    except GenerationMismatch as exc:
        raise SupersededError(
            f"hour {h.isoformat()}: superseded by run {_committed_by(hour, h)} while run {hour.run_id} was "
            f"committing it ({exc}); re-run the hour"
        ) from exc


def release_claims(hour: Scope, paths: list[str]) -> None:
    """Delete the claims a commit made, when it ends (committed or not)."""
    for path in paths:
        hour.storage.delete_prefix(hour.containers.staging, path)


def claim_commit(hour: Scope, h: datetime, generation: str | None, now: datetime | None = None) -> str:
    """Claim the commit of hour ``h`` from manifest ``generation`` before any of the hour is written, and return
    the claim's path (for ``release_claims``); ``SupersededError`` if another run holds that generation's claim."""
    storage, container = hour.storage, hour.containers.staging
    path = layout.commit_claim(h, generation or "")
    moment = now or datetime.now(timezone.utc)
    body = json.dumps({"run_id": hour.run_id, "hour": h.isoformat(), "claimed_at": moment.isoformat()}).encode()
    try:
        storage.write_bytes_if(container, path, body, None)
        return path
    except GenerationMismatch:
        pass
    claim_generation = storage.generation(container, path)
    try:
        claim = json.loads(storage.read_bytes(container, path))
        claimant, claimed_at = str(claim["run_id"]), datetime.fromisoformat(str(claim["claimed_at"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        claimant, claimed_at = "?", moment - CLAIM_TTL  # an unreadable claim protects nothing: take it over
    if claimant == hour.run_id:
        return path  # a retry of the run that claimed it
    if moment - claimed_at < CLAIM_TTL:
        raise SupersededError(
            f"hour {h.isoformat()}: superseded by run {claimant}, which claimed its commit from the same state at "
            f"{claimed_at.isoformat()}; run {hour.run_id} wrote nothing for this hour and nothing is lost: re-run the "
            f"hour (if run {claimant}'s commit died before its manifest, clear it, or wait until "
            f"{(claimed_at + CLAIM_TTL).isoformat()})"
        )
    try:
        storage.write_bytes_if(container, path, body, claim_generation)  # the stale claim, taken over once
    except GenerationMismatch as exc:
        raise SupersededError(
            f"hour {h.isoformat()}: another run took over the stale commit claim of run {claimant} first; "
            f"run {hour.run_id} wrote nothing for this hour: re-run the hour"
        ) from exc
    return path
