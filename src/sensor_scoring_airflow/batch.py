"""The Batch account inside Airflow: the ``azure_batch`` connection read by the Azure provider's ``AzureBatchHook``.

The hook, not this project, understands the connection: login and password (the account's shared key), or no
login and password, in which case it authenticates with Entra ID through azure-identity's
``DefaultAzureCredential`` (managed identity, workload identity, a service principal in ``AZURE_CLIENT_ID`` /
``AZURE_TENANT_ID`` / ``AZURE_CLIENT_SECRET``, the Azure CLI). The operator and the trigger get their client here
and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.batch import BatchClient


def batch_client(conn_id: str) -> BatchClient:
    """The azure-batch client of the connection ``conn_id``, as ``AzureBatchHook`` builds it (a blocking call:
    the hook reads the connection; the trigger makes it in a thread)."""
    from airflow.providers.microsoft.azure.hooks.batch import AzureBatchHook

    return AzureBatchHook(azure_batch_conn_id=conn_id).get_conn()


def batch_account_url(conn_id: str) -> str:
    """The Batch account URL of the connection, read as the hook reads it (``extra.account_url``, or the older
    ``extra__azure_batch__account_url``): for the task output links in the log."""
    from airflow.providers.microsoft.azure.hooks.batch import AzureBatchHook
    from airflow.providers.microsoft.azure.utils import get_field

    hook = AzureBatchHook(azure_batch_conn_id=conn_id)
    conn = hook.get_connection(conn_id)
    url = get_field(conn_id=conn_id, conn_type=hook.conn_type, extras=conn.extra_dejson, field_name="account_url")
    if not url:
        raise ValueError(f"Airflow connection {conn_id!r} has no extra.account_url (the Batch account URL)")
    return str(url)
