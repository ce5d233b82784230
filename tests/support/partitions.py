"""Reading what a run committed: an hour's partition in storage, and what Airflow stored for the run."""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import Any

import pandas as pd

from sensor_scoring.storage import Storage


def read_partition(blob: Storage, container: str, hour: datetime) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The hour's Parquet part and its manifest, from ``date=YYYY-MM-DD/hour=HH/`` of ``container``."""
    prefix = f"date={hour:%Y-%m-%d}/hour={hour:%H}/"
    frame = pd.read_parquet(io.BytesIO(blob.read_bytes(container, prefix + "part-00000.parquet")))
    return frame, json.loads(blob.read_bytes(container, prefix + "_manifest.json"))


def run_records(run_id: str) -> list[str]:
    """Every XCom value and rendered template field Airflow stored for a run, as text."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = session.query(XComModel).filter(XComModel.run_id == run_id)
        rendered = session.query(RenderedTaskInstanceFields).filter(RenderedTaskInstanceFields.run_id == run_id)
        return [json.dumps(x.value, default=str) for x in xcoms] + [
            json.dumps(r.rendered_fields, default=str) for r in rendered
        ]
