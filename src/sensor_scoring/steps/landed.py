"""wait_for_windows: has Stream Analytics finished landing the interval's windows?"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sensor_scoring.layout import HOUR
from sensor_scoring.runs.common import names_storage_outages
from sensor_scoring.runs.scope import Scope
from sensor_scoring.windows import folders_for_interval


@names_storage_outages
def windows_landed(
    hour: Scope, *, late_folders: int, settle_minutes: float, now: datetime | None = None
) -> tuple[bool, str]:
    """Has the interval's output landed? Stream Analytics gives no end-of-hour marker, so:

    landed when a folder after the interval holds a blob (the job has moved on), or when the interval's
    folders hold blobs and none was written in the last ``settle_minutes`` (the job has gone quiet).
    """
    now = now or datetime.now(timezone.utc)
    folders = folders_for_interval(hour.start, hour.end, late_folders=0)
    after = folders_for_interval(hour.end, hour.end + HOUR * max(1, late_folders), late_folders=0)
    container = hour.containers.windows
    for folder in after:
        if hour.storage.list(container, folder + "/"):
            return True, f"windows have landed: the stream has moved on to folder {folder}"
    blobs = [b for folder in folders for b in hour.storage.list(container, folder + "/")]
    if not blobs:
        return False, f"no windows yet in {', '.join(folders)}"
    quiet = now - max(b.last_modified for b in blobs)
    if quiet >= timedelta(minutes=settle_minutes):
        return True, f"windows have landed: {len(blobs)} file(s), none new for {quiet}"
    return False, f"{len(blobs)} file(s) so far, last one {quiet} ago; waiting for {settle_minutes} quiet minutes"
