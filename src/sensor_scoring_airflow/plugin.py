"""The Airflow plugin of the distribution (entry point ``airflow.plugins``): the "Shard outputs" link of the shard
operator, which the API server resolves from the serialized DAG."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from sensor_scoring_airflow.links import ShardOutputsLink


class ScoringPlugin(AirflowPlugin):
    name = "sensor_scoring"
    operator_extra_links = [ShardOutputsLink()]
