"""What several steps share: naming storage outages, the quarantine frame, per-hour counting and a shard's input."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import pandas as pd

from sensor_scoring import storage as st
from sensor_scoring.contracts import QUARANTINE_SCHEMA, StorageUnavailable
from sensor_scoring.storage import Storage
from sensor_scoring.windows import empty_rejected, empty_windows

P = ParamSpec("P")
R = TypeVar("R")


def names_storage_outages(step: Callable[P, R]) -> Callable[P, R]:
    """Say plainly when a step failed because storage stayed away, instead of a bare socket error."""

    @functools.wraps(step)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return step(*args, **kwargs)
        except Exception as exc:
            from azure.core.exceptions import ServiceRequestError, ServiceResponseError

            if not isinstance(exc, (ServiceRequestError, ServiceResponseError)):
                raise
            first: Any = args[0] if args else None
            storage = getattr(first, "storage", first)
            where = storage.describe() if hasattr(storage, "describe") else "blob storage"
            retries = getattr(storage, "retry_total", "?")
            raise StorageUnavailable(
                f"{step.__name__}: {where} is unreachable after {retries} retries with exponential backoff "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). Check the storage account and the "
                f"network; the budget is set by {st.RETRIES_ENV} and {st.RETRY_BACKOFF_ENV}."
            ) from exc

    return wrapper


def quarantine_frame(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Rejected rows in the columns of ``QUARANTINE_SCHEMA``, stamped with the run that rejected them."""
    out = frame.reindex(columns=QUARANTINE_SCHEMA.names).copy()
    out["reading_count"] = pd.to_numeric(out["reading_count"], errors="coerce").astype("float64")
    out["run_id"] = run_id
    return out


def hour_key(moment: pd.Timestamp | datetime) -> str:
    """The ISO text of an hour, as records key their per-hour maps."""
    return str(pd.Timestamp(moment).to_pydatetime().isoformat())


def count_by_hour(hours: pd.Series) -> Counter[str]:
    """Rows per partition hour, keyed by ISO hour (counted first, converted once per hour)."""
    return Counter({hour_key(h): int(n) for h, n in hours.value_counts(dropna=False).items() if not pd.isna(h)})


#: The kinds of rows a read task routes into a shard's input folder (``layout.Shard.part``).
PART_KINDS = ("landed", "rejected", "context")


def read_parts(
    storage: Storage, staging: str, folder: str, kinds: Sequence[str] = PART_KINDS
) -> dict[str, pd.DataFrame]:
    """The rows the read tasks routed into a shard's input folder, one frame per kind."""
    parts: dict[str, list[pd.DataFrame]] = {kind: [] for kind in kinds}
    for info in storage.list(staging, folder):
        kind = info.name.rsplit("-", 1)[-1].removesuffix(".parquet")
        if kind in parts:
            parts[kind].append(st.read_parquet(storage, staging, info.name))
    empty = {"landed": empty_windows, "rejected": empty_rejected, "context": empty_windows}
    return {kind: pd.concat(frames, ignore_index=True) if frames else empty[kind]() for kind, frames in parts.items()}
