"""Hourly batch scoring of per-sensor anomaly models.

Everything the Airflow DAG does lives here so that it can be imported, tested and run without Airflow:
``python -m sensor_scoring --help`` lists the commands.
"""

from __future__ import annotations

__version__ = "0.1.0"
