"""Settings read from the environment, with the defaults DESIGN.md names.

Kept free of heavy imports: the DAG file and the CLI read it at start-up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone

#: Azurite's well-known development account; the default so that a laptop needs no settings.
DEFAULT_STORAGE = "UseDevelopmentStorage=true"
#: Environment variable holding a connection string or a local directory.
STORAGE_ENV = "SCORING_STORAGE"
#: Airflow connection (type wasb) that, when it exists, overrides ``SCORING_STORAGE`` inside Airflow.
STORAGE_CONN_ID_ENV = "SCORING_STORAGE_CONN_ID"
DEFAULT_STORAGE_CONN_ID = "scoring_storage"

#: Window features fed to every model, in this order. reading_count makes dropouts visible.
FEATURES: tuple[str, ...] = ("value_avg", "value_min", "value_max", "value_std", "reading_count")
#: Columns that identify one landed window.
WINDOW_KEY: tuple[str, ...] = ("device_id", "tag", "window_end")
#: The alias the hourly DAG scores with unless told otherwise.
PRODUCTION_ALIAS = "production"
#: The first hour the DAG scores (its Airflow ``start_date``), read when the DAG file is parsed. The default is
#: early enough for any history a user migrates (the reference architecture's sample data is from 2018).
START_DATE_ENV = "SCORING_START_DATE"
DEFAULT_START_DATE = "2000-01-01T00:00Z"


@dataclass(frozen=True)
class Containers:
    """Container names; each can be renamed with ``SCORING_CONTAINER_<NAME>``."""

    windows: str = "windows"
    models: str = "models"
    predictions: str = "predictions"
    quarantine: str = "quarantine"
    staging: str = "staging"
    labels: str = "labels"

    @classmethod
    def from_env(cls) -> Containers:
        """Apply ``SCORING_CONTAINER_*`` overrides to the defaults."""
        values = {
            name: os.environ.get(f"SCORING_CONTAINER_{name.upper()}", default)
            for name, default in cls().__dict__.items()
        }
        return cls(**values)


def storage_setting() -> str:
    """The storage setting from the environment (never logged: it may hold a key)."""
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def storage_conn_id() -> str:
    """Airflow connection id consulted before the environment."""
    return os.environ.get(STORAGE_CONN_ID_ENV) or DEFAULT_STORAGE_CONN_ID


def start_date() -> datetime:
    """``SCORING_START_DATE``: an ISO date or time on a whole hour, UTC unless it names an offset.

    A bad value raises a ``ValueError`` naming the variable, so the DAG file fails to parse with that message.
    """
    raw = os.environ.get(START_DATE_ENV, "").strip() or DEFAULT_START_DATE
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"environment variable {START_DATE_ENV}={raw!r} is not an ISO date or time "
                         f"(e.g. 2018-08-28 or 2018-08-28T23:00Z)") from None
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    if moment.minute or moment.second or moment.microsecond:
        raise ValueError(f"environment variable {START_DATE_ENV}={raw!r} is not on a whole UTC hour: "
                         "it names the first hour the DAG scores")
    return moment
