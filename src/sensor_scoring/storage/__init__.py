"""The one package that knows where bytes live: Azure Blob Storage (or Azurite), SAS URLs and a local directory.

Every other module speaks in (container, path) pairs or ``az://container/path`` URIs, so the same code runs
against Azure, Azurite and a plain folder. Writes are atomic per blob: a block blob becomes visible only when
its block list is committed, and a local file is written beside its target and renamed over it. That is the
property commit relies on to replace an hour without readers seeing half of it.

Which implementation a process gets is decided by :func:`open_storage` from one setting of a few strict forms;
anything else is an error naming where the setting came from, so a typo never becomes a local folder. An account
URL (blob or ``dfs`` endpoint) authenticates with Entra ID: the credential an adapter registered for that account
in this process (:func:`use_credential`, how Airflow's connection reaches code that only has the setting), else
azure-identity's ``DefaultAzureCredential`` (managed identity, workload identity, an environment service principal,
the Azure CLI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from sensor_scoring import settings as config
from sensor_scoring.storage.base import (
    READ_CONCURRENCY,
    ROW_GROUP_ROWS,
    URI_SCHEME,
    BlobInfo,
    BlobStat,
    GenerationMismatch,
    Storage,
    UnsafePathError,
    iter_parquet,
    make_uri,
    parquet_bytes,
    parquet_frame,
    parse_uri,
    read_parquet,
    safe_path,
)
from sensor_scoring.storage.blob import (
    RETRIES_ENV,
    RETRY_BACKOFF_ENV,
    AccountUrlError,
    BlobStorage,
    account_url,
    is_folder_marker,
    retry_policy,
    retry_settings,
    use_credential,
)
from sensor_scoring.storage.local import LocalStorage
from sensor_scoring.storage.ranged import BlobFile, read_parquet_rows
from sensor_scoring.storage.sas import SAS_SETTING_KEY, SasStorage, make_sas_setting, sas_container_urls

#: The names of the submodules re-exported here, and the setting parser (the blob paths below are public too).
__all__ = [
    "READ_CONCURRENCY",
    "ROW_GROUP_ROWS",
    "AccountUrlError",
    "RETRIES_ENV",
    "RETRY_BACKOFF_ENV",
    "SAS_SETTING_KEY",
    "URI_SCHEME",
    "BlobFile",
    "BlobInfo",
    "BlobStat",
    "BlobStorage",
    "GenerationMismatch",
    "LocalStorage",
    "SasStorage",
    "Storage",
    "StorageSetting",
    "StorageSettingError",
    "UnsafePathError",
    "account_url",
    "is_folder_marker",
    "iter_parquet",
    "make_sas_setting",
    "make_uri",
    "open_storage",
    "parquet_bytes",
    "parquet_frame",
    "parse_setting",
    "parse_uri",
    "read_parquet",
    "read_parquet_rows",
    "retry_policy",
    "retry_settings",
    "safe_path",
    "sas_container_urls",
    "use_credential",
]

#: What :func:`parse_setting` accepts, for its error messages.
ACCEPTED_FORMS = (
    "a connection string (key=value;... with AccountName and AccountKey, or with BlobEndpoint; or "
    "UseDevelopmentStorage=true), an account URL (https://<account>.blob.core.windows.net or its dfs endpoint, "
    'authenticated with Entra ID), a SAS setting (JSON {"sas_containers": ...}), file://<path> or an '
    "absolute directory path"
)
FILE_SCHEME = "file://"
StorageKind = Literal["connection_string", "account_url", "sas", "directory"]


class StorageSettingError(ValueError):
    """A storage setting of no accepted form. The message names where it came from, never its value (a key)."""


@dataclass(frozen=True)
class StorageSetting:
    """A storage setting recognised as one of the accepted forms; ``value`` is never shown in a repr."""

    kind: StorageKind
    value: str = field(repr=False)


def parse_setting(setting: str, *, source: str = config.STORAGE_ENV) -> StorageSetting:
    """Which form ``setting`` has: a connection string, an account URL, a SAS setting, or a local directory.

    ``source`` names where the setting came from (``SCORING_STORAGE``, or an Airflow connection) in the error
    raised for anything else; the value itself may hold a key and is never part of the message.
    """
    text = setting.strip()
    if not text:
        raise StorageSettingError(f"{source} is empty; expected {ACCEPTED_FORMS}")
    if text.startswith("{"):
        try:
            sas_container_urls(text)
        except ValueError as exc:
            raise StorageSettingError(f"{source} is not a usable SAS setting: {exc}") from None
        return StorageSetting("sas", text)
    if "://" in text.split("=", 1)[0] and not text.startswith(FILE_SCHEME):  # a URL, not a key=value connection string
        try:
            return StorageSetting("account_url", account_url(text))
        except AccountUrlError as exc:
            raise StorageSettingError(
                f"{source} is not a usable account URL: {exc}; expected {ACCEPTED_FORMS}"
            ) from None
    if text.startswith(FILE_SCHEME):
        path = text[len(FILE_SCHEME) :]
        if not path:
            raise StorageSettingError(f"{source} is file:// without a path; expected {ACCEPTED_FORMS}")
        return StorageSetting("directory", path)
    if os.path.isabs(text):  # before the key=value test: a folder may be called date=2026-01-01
        return StorageSetting("directory", text)
    if "=" in text:
        problem = _connection_string_problem(text)
        if problem:
            raise StorageSettingError(
                f"{source} is not a usable connection string: {problem}; expected {ACCEPTED_FORMS}"
            )
        return StorageSetting("connection_string", text)
    raise StorageSettingError(
        f"{source} is of no accepted form (a local directory needs an absolute path or "
        f"file://); expected {ACCEPTED_FORMS}"
    )


def _connection_string_problem(text: str) -> str:
    """What keeps ``key=value;...`` from being a connection string the pipeline can use; '' if nothing.
    Names keys and positions only: values may be secrets."""
    keys: dict[str, str] = {}
    for number, part in enumerate((p for p in text.split(";") if p.strip()), start=1):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            return f"part {number} is not key=value"
        keys[key.strip().lower()] = value.strip()
    if "usedevelopmentstorage" in keys:
        # the SDK knows the development account by exactly this value
        return "" if keys["usedevelopmentstorage"] == "true" else "UseDevelopmentStorage must be true"
    if keys.get("blobendpoint") or (keys.get("accountname") and keys.get("accountkey")):
        return ""
    return "it has neither AccountName with AccountKey nor BlobEndpoint"


def open_storage(setting: str | None = None, *, source: str = config.STORAGE_ENV) -> Storage:
    """Storage for a setting (see :func:`parse_setting`); ``SCORING_STORAGE`` of the settings when not given.

    ``source`` names the setting's origin in errors: pass the Airflow connection's name when it came from one.
    """
    parsed = parse_setting(config.storage_setting() if setting is None else setting, source=source)
    if parsed.kind == "sas":
        return SasStorage(sas_container_urls(parsed.value))
    if parsed.kind in ("connection_string", "account_url"):
        return BlobStorage(parsed.value)
    return LocalStorage(parsed.value)
