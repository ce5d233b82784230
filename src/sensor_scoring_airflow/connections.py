"""Storage from Airflow's connections: the ``scoring_storage`` wasb connection, else ``SCORING_STORAGE``.

Airflow is imported inside :func:`storage_setting_and_source` only, so this module imports without it (a connection
object is anything with ``conn_id``, ``host``, ``login``, ``password`` and ``extra_dejson``).
"""

from __future__ import annotations

import logging
from typing import Any

from sensor_scoring import settings as config, storage as st
from sensor_scoring.storage import Storage

log = logging.getLogger(__name__)


def connection_to_setting(conn: Any) -> str:
    """A storage setting (connection string) from an Airflow wasb connection.

    Understood: ``extra.connection_string``; or account name in ``login`` with the key in ``password``
    (``host`` as blob endpoint, for Azurite or sovereign clouds); or ``extra.sas_token`` with ``host``.
    """
    extra = conn.extra_dejson or {}
    if extra.get("connection_string"):
        return str(extra["connection_string"])
    endpoint = f"BlobEndpoint={conn.host.rstrip('/')};" if conn.host else ""
    if conn.login and conn.password:
        protocol = "http" if (conn.host or "").startswith("http://") else "https"
        return f"DefaultEndpointsProtocol={protocol};AccountName={conn.login};AccountKey={conn.password};{endpoint}"
    if extra.get("sas_token") and conn.host:
        return f"{endpoint}SharedAccessSignature={str(extra['sas_token']).lstrip('?')}"
    raise ValueError(
        f"Airflow connection {conn.conn_id!r} has no connection_string, account key or SAS token; "
        "managed identity is not supported by the scoring tasks yet"
    )


def storage_setting_and_source() -> tuple[str, str]:
    """The storage setting and where it came from: the Airflow connection ``scoring_storage`` (or
    ``SCORING_STORAGE_CONN_ID``) if defined, else ``SCORING_STORAGE``. The source names the setting in errors."""
    settings = config.current()
    try:
        from airflow.sdk import Connection

        conn = Connection.get(settings.storage_conn_id)
    except Exception as exc:  # not defined: the environment decides, which is the normal laptop case
        log.info(
            "No Airflow connection %r (%s); storage comes from %s",
            settings.storage_conn_id,
            type(exc).__name__,
            config.STORAGE_ENV,
        )
        return settings.storage, config.STORAGE_ENV
    log.info("Storage from Airflow connection %r", settings.storage_conn_id)
    return connection_to_setting(conn), f"Airflow connection {settings.storage_conn_id!r}"


def storage_setting() -> str:
    """The storage setting of :func:`storage_setting_and_source` (never logged: it may hold a key)."""
    return storage_setting_and_source()[0]


def open_storage() -> Storage:
    """Storage of the task: a malformed setting is an error naming the connection or variable it came from."""
    setting, source = storage_setting_and_source()
    return st.open_storage(setting, source=source)
