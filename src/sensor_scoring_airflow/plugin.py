"""The Airflow plugin of the distribution (entry point ``airflow.plugins``): the "Shard outputs" link of the shard
operator, which the API server resolves from the serialized DAG, and the fleet and sensor pages
(``sensor_scoring_airflow.views``: a FastAPI app mounted at ``/scoring``, behind Airflow's login, with an entry in
the UI's navigation that shows the fleet page inside the UI)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from sensor_scoring_airflow.links import ShardOutputsLink
from sensor_scoring_airflow.views import URL_PREFIX, create_app


class ScoringPlugin(AirflowPlugin):
    name = "sensor_scoring"
    operator_extra_links = [ShardOutputsLink()]
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Sensor scoring views"}]
    external_views = [
        {
            "name": "Sensor fleet",
            "href": f"{URL_PREFIX}/fleet",
            "destination": "nav",
            "url_route": "sensor-fleet",
        }
    ]
