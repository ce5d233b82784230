"""``make demo``: one hour scored end to end on a laptop, from nothing, in a couple of minutes.

Starts Azurite (unless ``SCORING_STORAGE`` points elsewhere or one already listens on 10000), lands 24 hours
of simulated windows and trains a production model version if none exist, runs the ``sensor_scoring`` DAG
with ``dag.test()`` for the latest complete hour and prints what happened. Re-running reuses what exists.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from scoring import config
from scoring.azurite import REPO, Azurite, connection_string, port_open

AIRFLOW_HOME = REPO / ".airflow"
AZURITE_DATA = REPO / ".azurite"
OUTPUT = REPO / ".demo-output"


def prepare_airflow(home: Path, dags_folder: Path) -> None:
    """Point Airflow at a project-local home (SQLite) and the project's dags/, and migrate its DB.

    Must run before ``airflow`` is imported: Airflow reads its configuration at import time.
    """
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(dags_folder))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def load_dag(path: Path):
    """The DAG object of a DAG file, imported the way the DAG processor would."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.dag


def ensure_data(storage, containers: config.Containers, devices: int, tags: int, first: datetime, now: datetime) -> dict[str, int]:
    """Simulate every hour from ``first`` up to now not simulated whole before (and the current one).

    An hour is done when its label file was written after the hour ended: a folder is no sign (the
    previous hour's late windows land in it too), and an hour simulated while it was still going on is
    partial.
    """
    from scoring.simulate import SimulationConfig, label_path, simulate_to_storage
    from scoring.windows import HOUR

    cfg = SimulationConfig(devices=devices, tags=tags, seed=42)
    totals = {"hours": 0, "windows": 0}
    hour = first
    while hour < now:
        current = hour + HOUR > now
        labels = storage.list(containers.labels, label_path(hour))
        if current or not labels or labels[0].last_modified < hour + HOUR:
            # the current hour is a live stream: land what has "happened" so far
            done = simulate_to_storage(storage, cfg, hour, min(hour + HOUR, now),
                                       windows_container=containers.windows, labels_container=containers.labels)
            totals["hours"] += done["hours"]
            totals["windows"] += done["windows"]
        hour += HOUR
    return totals


def run_demo(*, devices: int = 20, tags: int = 3, hours: int = 24, sensors_per_shard: int = 15) -> dict[str, object]:
    from scoring import models
    from scoring.storage import MANIFEST_FILE, PARTITION_FILE, open_storage, partition_prefix

    azurite = None
    if config.STORAGE_ENV not in os.environ:
        if not port_open("127.0.0.1", 10000):
            azurite = Azurite(AZURITE_DATA, port=10000).start()
            print(f"Started Azurite on 127.0.0.1:10000 (pid {azurite.proc.pid}, data in {AZURITE_DATA})")
        else:
            print("Using the Azurite (or other blob server) already listening on 127.0.0.1:10000")
        os.environ[config.STORAGE_ENV] = connection_string("127.0.0.1", 10000)
    try:
        storage, containers = open_storage(), config.Containers.from_env()
        now = datetime.now(timezone.utc)
        latest = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        first = latest - timedelta(hours=hours - 1)
        landed = ensure_data(storage, containers, devices, tags, first, now)
        print(f"Simulated {landed['hours']} hour(s), {landed['windows']} window(s); {devices} devices x {tags} sensors")
        try:
            version = models.resolve_version(storage, containers.models, config.PRODUCTION_ALIAS)
            print(f"Using model version {version} (alias {config.PRODUCTION_ALIAS})")
        except LookupError:
            from scoring.training import train_and_register

            manifest, _ = train_and_register(storage, containers, first, latest, promote=True)
            version = str(manifest["version"])
            print(f"Trained {manifest['models']} model(s) on [{first:%Y-%m-%d %H:%M}, {latest:%H:%M}) UTC as {version}, promoted")

        prepare_airflow(AIRFLOW_HOME, REPO / "dags")
        dag = load_dag(REPO / "dags" / "sensor_scoring.py")
        # A manual run at logical date T covers the hour that ended at T: [latest, latest + 1h).
        run = dag.test(logical_date=latest + timedelta(hours=1), run_conf={"sensors_per_shard": sensors_per_shard})
        state = str(getattr(run, "state", "unknown"))
        part = partition_prefix(latest)
        manifest = json.loads(storage.read_bytes(containers.predictions, part + MANIFEST_FILE))
        local = OUTPUT / "predictions" / part / PARTITION_FILE
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(storage.read_bytes(containers.predictions, part + PARTITION_FILE))
        summary = summarise(storage, containers, latest, manifest, local)
        summary["dag_run_state"] = state
        print_summary(summary, part)
        return summary
    finally:
        if azurite is not None:
            azurite.stop()
            print("Stopped Azurite (its data stays in .azurite/ for the next run)")


def summarise(storage, containers: config.Containers, hour: datetime, manifest: dict, local: Path) -> dict[str, object]:
    """Numbers for the person at the terminal, including how the flags compare with the simulator's labels."""
    import pandas as pd

    from scoring.simulate import label_path
    from scoring.storage import read_parquet

    predictions = pd.read_parquet(local)
    counts = manifest["counts"]
    summary: dict[str, object] = {
        "hour": hour.isoformat(),
        "windows_read": counts["landed"],
        "sensors_scored": int(predictions[["device_id", "tag"]].drop_duplicates().shape[0]),
        "windows_scored": counts["scored"],
        "anomalies": counts["anomalies"],
        "quarantined": counts["quarantined"],
        "duplicates": counts["duplicates"],
        "model_version": manifest["model_version"],
        "partition": f"az://{containers.predictions}/{local.parent.relative_to(OUTPUT / 'predictions').as_posix()}/",
        "local_copy": str(local),
    }
    try:
        labels = read_parquet(storage, containers.labels, label_path(hour))
        merged = predictions.merge(labels, on=["device_id", "tag", "window_end"], how="left")
        labelled = merged["anomaly"].notna()
        summary["labelled_anomalies"] = int(labelled.sum())
        summary["labelled_anomalies_flagged"] = int((labelled & merged["is_anomaly"]).sum())
    except FileNotFoundError:
        pass
    return summary


def print_summary(summary: dict[str, object], part: str) -> None:
    print()
    print(f"sensor_scoring, hour {summary['hour']} -> DAG run {summary['dag_run_state']}")
    print(f"  windows read       {summary['windows_read']}")
    print(f"  sensors scored     {summary['sensors_scored']} ({summary['windows_scored']} windows, model {summary['model_version']})")
    print(f"  anomalies found    {summary['anomalies']}")
    if "labelled_anomalies" in summary:
        print(f"  simulator labels   {summary['labelled_anomalies_flagged']} of {summary['labelled_anomalies']} injected anomalous windows flagged")
    print(f"  quarantined rows   {summary['quarantined']} (duplicates collapsed: {summary['duplicates']})")
    print(f"  partition          {summary['partition']}")
    print(f"  local copy         {summary['local_copy']}")
    print(f"  read it with       .venv/bin/python -c \"import pandas as pd; print(pd.read_parquet('{summary['local_copy']}'))\"")
