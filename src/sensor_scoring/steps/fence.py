"""Fenced commits: a run commits an hour only if nobody committed it since the run read it.

``load_and_validate`` records, before it reads any window, the generation (ETag on blob storage, the content's
hash on a directory) of each hour's committed predictions manifest (``HourSummary.generations``). ``commit``
checks it before it writes the hour's partition (``check_fence``) and writes the manifest conditionally on it
(``write_fenced_manifest``: If-Match on blob storage, a lock on a directory), so two runs of one hour
(scheduled, manual, backfill, rescoring) can never leave a partition older than one already committed: the
run that read the older state fails with ``SupersededError`` "superseded by run X", commits nothing for that
hour, and loses nothing (every landed window is still in its folder for a re-run). A retry of the same run
(its own earlier try committed the hour) is not a conflict.
"""

from __future__ import annotations

import json
from datetime import datetime

from sensor_scoring import layout
from sensor_scoring.contracts import HourSummary, SupersededError
from sensor_scoring.steps.interval import Hour
from sensor_scoring.storage import GenerationMismatch


def read_generations(hour: Hour) -> dict[str, str]:
    """The generation of each hour's committed manifest now ("" for an hour never committed)."""
    container = hour.containers.predictions
    return {h.isoformat(): hour.storage.generation(container, layout.Partition(h).manifest) or "" for h in hour.hours}


def _committed_by(hour: Hour, h: datetime) -> str:
    """The run that wrote the hour's manifest as it is now (``?`` if unreadable)."""
    try:
        body = json.loads(hour.storage.read_bytes(hour.containers.predictions, layout.Partition(h).manifest))
        return f"{body.get('run_id', '?')} (committed at {body.get('committed_at', '?')})"
    except (FileNotFoundError, ValueError, AttributeError):
        return "? (its manifest is gone or unreadable)"


def _own(hour: Hour, h: datetime) -> bool:
    try:
        body = json.loads(hour.storage.read_bytes(hour.containers.predictions, layout.Partition(h).manifest))
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(body, dict) and body.get("run_id") == hour.run_id


def check_fence(hour: Hour, summary: HourSummary, h: datetime) -> str | None:
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


def write_fenced_manifest(hour: Hour, h: datetime, body: bytes, generation: str | None) -> None:
    """Write the predictions manifest only if it is still at ``generation``: the check and the write are one
    step on the storage, so a run committing in between is caught even inside ``commit``."""
    try:
        hour.storage.write_bytes_if(hour.containers.predictions, layout.Partition(h).manifest, body, generation)
    except GenerationMismatch as exc:
        raise SupersededError(
            f"hour {h.isoformat()}: superseded by run {_committed_by(hour, h)} while run {hour.run_id} was "
            f"committing it ({exc}); re-run the hour"
        ) from exc
