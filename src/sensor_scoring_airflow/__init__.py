"""Airflow adapters of :mod:`sensor_scoring`: the shard operator, its Batch trigger, the extra link, the alert
notifiers, the deadline callback and the glue that reads an Airflow context and connections.

Installed with the distribution ``sensor-scoring`` and registered the way providers are (entry points
``apache_airflow_provider`` and ``airflow.plugins`` in ``pyproject.toml``), so an Airflow with the package installed
loads the extra link and the DAG file imports with nothing but the DAGs folder. Modules import only Airflow's
authoring API and light ``sensor_scoring`` modules at import time: the DAG file imports them at parse time.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ProvidersManager (``airflow providers list``, extra links, notifiers)."""
    from sensor_scoring import __version__

    return {
        "package-name": "sensor-scoring",
        "name": "Sensor scoring",
        "description": "Hourly scoring of per-sensor anomaly models on Azure Blob Storage and Azure Batch.",
        "versions": [__version__],
        "extra-links": ["sensor_scoring_airflow.links.ShardOutputsLink"],
        "notifications": [
            "sensor_scoring_airflow.alerts.ScoringAlertNotifier",
            "sensor_scoring_airflow.alerts.EmptyRunNotifier",
        ],
    }
