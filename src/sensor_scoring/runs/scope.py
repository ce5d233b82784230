"""Which hours a run covers, and the ``Scope`` every step is given: storage, containers, run id and interval
(one hour or many)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from sensor_scoring import settings as config
from sensor_scoring.layout import HOUR
from sensor_scoring.storage import Storage


@dataclass(frozen=True)
class Scope:
    """Where one run reads and writes: its storage, containers, id and interval [start, end), one hour or many
    (a backfill, a rescoring, a training range)."""

    storage: Storage
    containers: config.Containers
    run_id: str
    start: datetime
    end: datetime

    @property
    def run_key(self) -> str:
        return run_key(self.run_id)

    @property
    def hours(self) -> list[datetime]:
        """The whole hours of the interval, in order: one partition each."""
        return hours_of(self.start, self.end)


def run_key(run_id: str) -> str:
    """A blob-safe, collision-free folder name for a run id (Airflow ids hold ``:`` and ``+``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)[:80]
    return f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def resolve_interval(
    window_start: str | None,
    window_end: str | None,
    data_interval_start: datetime | None,
    data_interval_end: datetime | None,
    run_after: datetime | None = None,
) -> tuple[datetime, datetime]:
    """The hours a run scores: explicit params, else the data interval, else the last complete hour.

    Manual runs in Airflow 3 may have no logical date and a zero-length interval; they then score the
    hour that ended last before the run was requested. Bounds must sit on whole hours, since an hour's
    partition is replaced as a whole.
    """
    if window_start or window_end:
        if not (window_start and window_end):
            raise ValueError("give both window_start and window_end, or neither")
        start, end = parse_utc(window_start), parse_utc(window_end)
    elif data_interval_start and data_interval_end and data_interval_end > data_interval_start:
        start, end = data_interval_start, data_interval_end
    else:
        moment = run_after or data_interval_end or datetime.now(timezone.utc)
        end = moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        start = end - HOUR
    start, end = _plain_utc(start), _plain_utc(end)
    for name, bound in (("start", start), ("end", end)):
        if bound.minute or bound.second or bound.microsecond:
            raise ValueError(f"window {name} {bound.isoformat()} is not on a whole hour")
    if end <= start:
        raise ValueError(f"window end {end.isoformat()} is not after window start {start.isoformat()}")
    return start, end


def _plain_utc(moment: datetime) -> datetime:
    """A stdlib UTC datetime: pendulum's (Airflow's) loses its zone in some arithmetic."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment} has no time zone")
    return datetime.fromtimestamp(moment.timestamp(), tz=timezone.utc)


def parse_utc(text: str) -> datetime:
    """An ISO time; UTC when it names no offset."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def hours_of(start: datetime, end: datetime) -> list[datetime]:
    """The whole hours from ``start`` up to (not including) ``end``."""
    out, moment = [], start
    while moment < end:
        out.append(moment)
        moment += HOUR
    return out
