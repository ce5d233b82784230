"""Every setting of the project, read from the environment in one place: one frozen :class:`Settings`.

Each field names its variable, default and meaning (``field(metadata=...)``); :func:`documented` lists them for the
README's settings table, which a test holds against this module. A value that does not parse is a ``ValueError``
naming the variable, so a DAG file, a task or a Batch node fails at start with that message instead of running on a
guess. Kept free of heavy imports: the DAG file and the CLI read it at start-up.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: Azurite's well-known development account; the default so that a laptop needs no settings.
DEFAULT_STORAGE = "UseDevelopmentStorage=true"
# Environment variable names: the only spelling of each in the package (other modules import them from here).
#: Holds a connection string, a local directory or a SAS setting.
STORAGE_ENV = "SCORING_STORAGE"
#: Airflow connection (type wasb) that, when it exists, overrides ``SCORING_STORAGE`` inside Airflow.
STORAGE_CONN_ID_ENV = "SCORING_STORAGE_CONN_ID"
DEFAULT_STORAGE_CONN_ID = "scoring_storage"
STORAGE_RETRIES_ENV = "SCORING_STORAGE_RETRIES"
STORAGE_RETRY_BACKOFF_ENV = "SCORING_STORAGE_RETRY_BACKOFF_S"
START_DATE_ENV = "SCORING_START_DATE"
DEFAULT_START_DATE = "2000-01-01T00:00Z"
TASK_RETRIES_ENV = "SCORING_TASK_RETRIES"
RETRY_DELAY_ENV = "SCORING_RETRY_DELAY_SECONDS"
DEADLINE_ENV = "SCORING_DEADLINE_MINUTES"
ANOMALY_THRESHOLD_ENV = "SCORING_ANOMALY_ALERT_THRESHOLD"
BOUNDS_ENV = "SCORING_PHYSICAL_BOUNDS"
DRIFT_PSI_ENV = "SCORING_DRIFT_PSI"
DRIFT_ANOMALY_EXCESS_ENV = "SCORING_DRIFT_ANOMALY_EXCESS"
DRIFT_HOURS_ENV = "SCORING_DRIFT_HOURS"
EVENTHUB_CONNECTION_ENV = "SCORING_EVENTHUB_CONNECTION"
EVENTHUB_NAME_ENV = "SCORING_EVENTHUB_NAME"
BACKEND_ENV = "SCORING_BACKEND"
BACKENDS = ("local", "azure_batch")
LOCAL_SHARDS_ENV = "SCORING_LOCAL_SHARDS"
#: Where the local backend runs a shard: in the task's own process, or as a child process of the task.
LOCAL_SHARD_MODES = ("task", "process")
FORMULA_ENV = "SCORING_BATCH_AUTOSCALE_FORMULA"
#: The Batch pool's autoscale formula, package data of the Batch backend: found wherever the package is installed.
DEFAULT_FORMULA = Path(__file__).resolve().parent / "backends" / "autoscale.formula"


_T = TypeVar("_T", bound="DataclassInstance")


def setting(
    env: str | None,
    default: Any,
    meaning: str,
    *,
    minimum: float | None = None,
    choices: tuple[str, ...] = (),
    secret: bool = False,
    shown_default: str | None = None,
) -> Any:
    """A dataclass field bound to an environment variable (``env=None``: not settable, a constant of the code).

    A ``secret`` value (it may hold a key) is left out of the dataclass's ``repr`` and of parse errors, so that
    logging the settings or their error never prints it.
    """
    meta = {
        "env": env,
        "meaning": meaning,
        "minimum": minimum,
        "choices": choices,
        "secret": secret,
        "shown_default": shown_default,
    }
    return field(default=default, metadata=meta, repr=not secret)


def _parse(kind: Any, env: str, raw: str, meta: Mapping[str, Any]) -> Any:
    """One variable's text as the field's type; a clear ``ValueError`` naming the variable otherwise."""
    echoed = "<hidden>" if meta["secret"] else repr(raw)
    if kind == int | None:
        kind = int
    if kind is int:
        try:
            value: Any = int(raw)
        except ValueError:
            raise ValueError(f"environment variable {env}={echoed} is not an integer") from None
    elif kind is float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"environment variable {env}={echoed} is not a number") from None
    elif kind is datetime:
        value = parse_start_date(raw, env)
    else:
        value = raw
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ValueError(f"environment variable {env}={echoed} must be at least {meta['minimum']:g}")
    if meta["choices"] and value not in meta["choices"]:
        raise ValueError(f"environment variable {env}={echoed} is not one of {', '.join(meta['choices'])}")
    return value


def load(cls: type[_T], environ: Mapping[str, str] | None = None) -> _T:
    """The frozen dataclass ``cls`` (fields made by :func:`setting`) read from ``environ`` (default ``os.environ``).

    Empty or unset variables keep the default; nested dataclass fields are read from the same environment.
    """
    environ = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = load(hints[f.name], environ)
            continue
        env: str | None = f.metadata.get("env")
        raw = environ.get(env, "").strip() if env else ""
        if env and raw:
            values[f.name] = _parse(hints[f.name], env, raw, f.metadata)
    return cls(**values)


def parse_start_date(raw: str, env: str = START_DATE_ENV) -> datetime:
    """``SCORING_START_DATE``: an ISO date or time on a whole hour, UTC unless it names an offset."""
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"environment variable {env}={raw!r} is not an ISO date or time (e.g. 2018-08-28 or 2018-08-28T23:00Z)"
        ) from None
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    if moment.minute or moment.second or moment.microsecond:
        raise ValueError(
            f"environment variable {env}={raw!r} is not on a whole UTC hour: it names the first hour the DAG scores"
        )
    return moment


@dataclass(frozen=True)
class Containers:
    """Blob container names; each can be renamed with ``SCORING_CONTAINER_<NAME>``."""

    windows: str = setting("SCORING_CONTAINER_WINDOWS", "windows", "landed 1-minute windows (Stream Analytics output)")
    models: str = setting("SCORING_CONTAINER_MODELS", "models", "the model registry: versions and aliases")
    predictions: str = setting(
        "SCORING_CONTAINER_PREDICTIONS", "predictions", "committed hourly Parquet partitions and their manifests"
    )
    quarantine: str = setting(
        "SCORING_CONTAINER_QUARANTINE", "quarantine", "rows and files refused by validation, each with a reason"
    )
    staging: str = setting("SCORING_CONTAINER_STAGING", "staging", "shard specs and outputs of runs before commit")
    labels: str = setting("SCORING_CONTAINER_LABELS", "labels", "the simulator's ground truth (demo and tests)")
    health: str = setting(
        "SCORING_CONTAINER_HEALTH", "health", "hourly model health per sensor (drift, anomaly and quarantine share)"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Containers:
        """The container names of ``environ`` (default ``os.environ``)."""
        return load(cls, environ)


@dataclass(frozen=True)
class BatchSettings:
    """Where and how shards run on Azure Batch (``SCORING_BACKEND=azure_batch``)."""

    conn_id: str = setting(
        "SCORING_BATCH_CONN_ID", "azure_batch_default", "Airflow connection (type azure_batch) of the Batch account"
    )
    pool_id: str = setting(
        "SCORING_BATCH_POOL_ID", "scoring-pool", "the shared pool, created when missing (unless it has an identity)"
    )
    vm_size: str = setting("SCORING_BATCH_VM_SIZE", "standard_d2s_v3", "VM size of the pool's nodes")
    max_nodes: int = setting("SCORING_BATCH_MAX_NODES", 4, "cap on dedicated nodes in the autoscale formula", minimum=0)
    max_low_priority_nodes: int = setting(
        "SCORING_BATCH_MAX_LOW_PRIORITY_NODES",
        0,
        "cap on low-priority (spot) nodes in the autoscale formula",
        minimum=0,
    )
    scorer_image: str = setting(
        "SCORING_SCORER_IMAGE",
        "sensor-scoring-scorer:latest",
        "container image of the shard tasks (Dockerfile target scorer)",
    )
    sas_hours: float = setting(
        "SCORING_BATCH_SAS_HOURS",
        6.0,
        "lifetime of the container SAS URLs a Batch task gets instead of the account key",
        minimum=0.1,
    )
    pool_identity_client_id: str = setting(
        "SCORING_BATCH_POOL_IDENTITY_CLIENT_ID",
        "",
        "client id of the pool's user-assigned managed identity: set, tasks reach storage as it and get no SAS",
        shown_default="unset",
    )
    node_image: str = setting(
        "SCORING_BATCH_NODE_IMAGE",
        "microsoft-dsvm:ubuntu-hpc:2204:latest",
        "marketplace image of the nodes, publisher:offer:sku:version",
    )
    node_agent_sku: str = setting(
        "SCORING_BATCH_NODE_AGENT_SKU", "batch.node.ubuntu 22.04", "Batch node agent SKU matching the node image"
    )
    task_slots_per_node: int = setting(
        "SCORING_BATCH_TASK_SLOTS_PER_NODE", 1, "shard tasks run at once on one node", minimum=1
    )
    container_run_options: str = setting(None, "--rm", "docker run options of every shard task")
    formula_path: str = setting(
        FORMULA_ENV,
        str(DEFAULT_FORMULA),
        "path of the pool's autoscale formula",
        shown_default="the packaged sensor_scoring/backends/autoscale.formula",
    )
    poll_s: float = setting(
        "SCORING_BATCH_POLL_SECONDS", 10.0, "first interval between polls of a shard task", minimum=0.01
    )
    max_poll_s: float = setting(
        "SCORING_BATCH_MAX_POLL_SECONDS", 120.0, "longest interval between polls (backoff cap)", minimum=0.01
    )
    job_ttl_hours: float = setting(
        "SCORING_BATCH_JOB_TTL_HOURS",
        24.0,
        "idle jobs of the DAG older than this are finished when a run starts",
        minimum=0,
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BatchSettings:
        """The Batch settings of ``environ`` (default ``os.environ``)."""
        return load(cls, environ)


@dataclass(frozen=True)
class Settings:
    """All settings of one process, read at once from the environment by :meth:`from_env`."""

    storage: str = setting(
        STORAGE_ENV,
        DEFAULT_STORAGE,
        "an Azure Storage connection string, an account URL (https, blob or dfs endpoint; Entra ID), "
        "or a local directory (absolute path or file://...)",
        secret=True,
        shown_default="`UseDevelopmentStorage=true` (Azurite)",
    )
    storage_conn_id: str = setting(
        STORAGE_CONN_ID_ENV,
        DEFAULT_STORAGE_CONN_ID,
        "Airflow connection (type wasb) that, inside Airflow, overrides SCORING_STORAGE",
    )
    storage_retries: int = setting(
        STORAGE_RETRIES_ENV, 6, "retries of one storage request before the step fails naming the outage", minimum=0
    )
    storage_retry_backoff_s: float = setting(
        STORAGE_RETRY_BACKOFF_ENV, 1.0, "first backoff between storage retries, doubled each time", minimum=0
    )
    containers: Containers = field(default_factory=Containers)
    start_date: datetime = setting(
        START_DATE_ENV,
        parse_start_date(DEFAULT_START_DATE),
        "the DAG's start_date, the first hour it scores (a whole UTC hour, read at parse "
        "time); runs of earlier hours are refused",
        shown_default=f"`{DEFAULT_START_DATE}`",
    )
    backend: str = setting(
        BACKEND_ENV,
        "local",
        "default of the DAG's backend param, where shards run: local or azure_batch (read at parse time)",
        choices=BACKENDS,
    )
    local_shards: str = setting(
        LOCAL_SHARDS_ENV,
        "task",
        "local backend: run a shard's step in the task's own process (task), or as the shard command in a child "
        "process (process: a fresh interpreter, as on Batch)",
        choices=LOCAL_SHARD_MODES,
    )
    task_retries: int = setting(
        TASK_RETRIES_ENV,
        2,
        "retries of every DAG task, with exponential backoff; score_shard gets one more (read at parse time)",
        minimum=0,
    )
    retry_delay_s: int = setting(
        RETRY_DELAY_ENV, 60, "first delay before a task's retry, in seconds (read at parse time)", minimum=1
    )
    deadline_minutes: int = setting(
        DEADLINE_ENV,
        90,
        "alert when a run is not done this long after its hour closed; 0 turns it off (read at parse time)",
        minimum=0,
    )
    anomaly_alert_threshold: int | None = setting(
        ANOMALY_THRESHOLD_ENV,
        None,
        "alert when a committed hour has more anomalies than this; unset: no such alert",
        minimum=0,
        shown_default="unset",
    )
    drift_psi: float = setting(
        DRIFT_PSI_ENV,
        0.0,
        "model health: a sensor also drifts in an hour when the PSI of its scores against training reaches this; "
        "0: PSI is reported, not judged (an hour of a daily cycle differs from a training day: docs/operating.md)",
        minimum=0,
        shown_default="`0` (off)",
    )
    drift_anomaly_excess: float = setting(
        DRIFT_ANOMALY_EXCESS_ENV,
        0.2,
        "model health: a sensor drifts in an hour when its anomaly rate exceeds its expected rate (calibrated "
        "false-alarm rate, or training flagged share at that hour of day) by this and that many anomalies are "
        "improbable at the expected rate (binomial p <= 0.001)",
        minimum=0,
    )
    drift_hours: int = setting(
        DRIFT_HOURS_ENV,
        3,
        "model health: a sensor drifting this many consecutive hours is listed in that hour's model_drift alert",
        minimum=1,
    )
    physical_bounds: str = setting(
        BOUNDS_ENV,
        "",
        "physical bounds per tag for validation: a JSON file path or inline JSON",
        shown_default="the packaged sensor_scoring/validation/physical_bounds.json",
    )
    eventhub_connection: str = setting(
        EVENTHUB_CONNECTION_ENV,
        "",
        "Event Hubs connection string of `simulate --eventhub`",
        secret=True,
        shown_default="none",
    )
    eventhub_name: str = setting(
        EVENTHUB_NAME_ENV, "", "Event Hub of `simulate --eventhub`", shown_default="the connection string's EntityPath"
    )
    batch: BatchSettings = field(default_factory=BatchSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every setting of ``environ`` (default ``os.environ``); a bad value raises naming its variable."""
        return load(cls, environ)


def current() -> Settings:
    """The settings of this process now. Not cached: tests and the CLI change the environment between calls."""
    return Settings.from_env()


@dataclass(frozen=True)
class Documented:
    """One row of the settings table: variable, default as shown, meaning."""

    env: str
    default: str
    meaning: str


def shown(value: Any) -> str:
    """A default as the settings tables show it: in backticks, numbers without a needless ``.0``."""
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def documented(cls: type[Any] = Settings) -> list[Documented]:
    """Every environment variable the settings read, in declaration order (nested settings inline)."""
    rows: list[Documented] = []
    hints = get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += documented(hints[f.name])
        elif f.metadata.get("env"):
            default = f.metadata["shown_default"] or shown(getattr(defaults, f.name))
            rows.append(Documented(f.metadata["env"], default, f.metadata["meaning"]))
    return rows


def markdown_table(rows: list[Documented] | None = None) -> str:
    """The settings table of the README (``python -c 'from sensor_scoring import settings;
    print(settings.markdown_table())'`` regenerates it)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{row.env}` | {row.default} | {row.meaning} |" for row in (documented() if rows is None else rows)]
    return "\n".join(lines)


# The functions below read one setting of the current environment; they are what most callers need.


def storage_setting() -> str:
    """The storage setting from the environment (never logged: it may hold a key)."""
    return current().storage


def storage_conn_id() -> str:
    """Airflow connection id consulted before the environment."""
    return current().storage_conn_id


def start_date() -> datetime:
    """``SCORING_START_DATE``; a bad value raises a ``ValueError`` naming the variable (the DAG fails to parse)."""
    return current().start_date
