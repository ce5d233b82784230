"""Storage from Airflow's connections: the ``scoring_storage`` wasb connection, else ``SCORING_STORAGE``.

The connection is read by the Azure provider's ``WasbHook``, which knows every mode of the wasb connection type:
a connection string, an account key, a SAS token, a service principal (``tenant_id`` with login and secret), a
managed identity (``managed_identity_client_id``), workload identity (``workload_identity_tenant_id``) and, with no
secret at all, ``DefaultAzureCredential``. Nothing here parses a connection: the hook's client hands over its
account URL and credential, and :class:`~sensor_scoring.storage.BlobStorage` puts them on the project's retry
budget. Airflow and the provider are imported inside the functions only, so this module imports without them.
"""

from __future__ import annotations

import logging

from sensor_scoring import settings as config, storage as st
from sensor_scoring.storage import BlobStorage, Storage

log = logging.getLogger(__name__)


def connection_storage(conn_id: str) -> BlobStorage:
    """Blob storage of the wasb connection ``conn_id``, as the provider's ``WasbHook`` authenticates it.

    A token credential (service principal, managed or workload identity, ``DefaultAzureCredential``) is also
    registered for its account in this process (:func:`~sensor_scoring.storage.use_credential`), so code handed
    only the setting (a shard run in the task's process, SAS signing for Batch) authenticates as the connection.
    """
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    storage = BlobStorage.from_service_client(WasbHook(wasb_conn_id=conn_id).get_conn())
    client = storage.service_client
    if client.credential is None and "?" not in client.url:  # e.g. a misspelt AccountKey in a connection string
        raise ValueError("it authenticates with nothing (no key, SAS or Entra ID credential): check its fields")
    credential = storage.token_credential
    if credential is not None:
        st.use_credential(storage.service_client.url, credential)
    return storage


def _defined(conn_id: str) -> bool:
    """Whether Airflow knows the connection (metadata DB, environment or a secrets backend)."""
    try:
        from airflow.sdk import Connection

        Connection.get(conn_id)
    except Exception as exc:  # not defined: the environment decides, which is the normal laptop case
        log.info(
            "No Airflow connection %r (%s); storage comes from %s", conn_id, type(exc).__name__, config.STORAGE_ENV
        )
        return False
    return True


def storage_and_source() -> tuple[Storage, str, str]:
    """The task's storage, the setting that opens it in another process, and where it came from (for errors):
    the Airflow connection ``scoring_storage`` (or ``SCORING_STORAGE_CONN_ID``) if defined, else
    ``SCORING_STORAGE``."""
    settings = config.current()
    conn_id = settings.storage_conn_id
    if not _defined(conn_id):
        return st.open_storage(settings.storage), settings.storage, config.STORAGE_ENV
    source = f"Airflow connection {conn_id!r}"
    try:
        storage = connection_storage(conn_id)
    except Exception as exc:  # the hook's own message names the field; a value of it is never part of ours
        raise st.StorageSettingError(f"{source} gives no usable blob storage: {type(exc).__name__}: {exc}") from exc
    log.info("Storage from %s: %s", source, storage.describe())
    return storage, storage.child_setting(), source


def storage_setting_and_source() -> tuple[str, str]:
    """The storage setting (what a shard or a child process opens) and where it came from."""
    _, setting, source = storage_and_source()
    return setting, source


def storage_setting() -> str:
    """The storage setting of :func:`storage_setting_and_source` (never logged: it may hold a key)."""
    return storage_setting_and_source()[0]


def open_storage() -> Storage:
    """Storage of the task: a malformed setting is an error naming the connection or variable it came from."""
    return storage_and_source()[0]
