"""What several steps share: naming storage outages, the quarantine frame, and per-hour counting."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import pandas as pd

from sensor_scoring import storage as st
from sensor_scoring.contracts import QUARANTINE_SCHEMA, StorageUnavailable

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
