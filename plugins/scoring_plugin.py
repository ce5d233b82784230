"""Registers the project's Airflow extras: the "Shard outputs" link of the shard operator."""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from scoring_airflow.links import ShardOutputsLink


class ScoringPlugin(AirflowPlugin):
    name = "scoring"
    operator_extra_links = [ShardOutputsLink()]
