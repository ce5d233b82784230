"""The "Shard outputs" button of each mapped ``score_shard`` instance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import XCom
from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

XCOM_KEY = "shard_outputs_url"


class ShardOutputsLink(BaseOperatorLink):
    """Links a shard to the blob listing of the hour partition its predictions land in.

    The URL is computed when the shard runs (it needs the storage account) and kept in XCom; it never
    carries a key or SAS, so on Azure the listing asks for access the way the portal would.
    """

    name = "Shard outputs"

    @property
    def xcom_key(self) -> str:
        # the API server resolves links from the serialized DAG by (name, xcom_key) alone: the operator
        # pushes the URL under this key while it runs
        return XCOM_KEY

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = XCom.get_value(key=XCOM_KEY, ti_key=ti_key)
        return str(url) if url else ""
