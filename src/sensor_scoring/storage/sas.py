"""Storage through container SAS URLs only: what an Azure Batch task gets instead of the account key or a token.

The URLs are signed with a user delegation key (Entra ID) when the storage authenticates with a token, so an
account that forbids shared-key access (``allowSharedKeyAccess=false``) serves them; with the account key only
when a key is what the storage has.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sensor_scoring.storage.base import BlobInfo, make_uri, safe_path
from sensor_scoring.storage.blob import (
    BlobStorage,
    ContainerReads,
    blob_generation,
    conditional_upload,
    download_blob_to,
    http_options,
    list_blobs,
    retry_policy,
    retry_settings,
    sdk_blobs,
)

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

#: The longest a user delegation key (and so a SAS it signs) may live, from now: the service's limit.
USER_DELEGATION_MAX = timedelta(days=7)
#: The one key of a SAS storage setting: ``{"sas_containers": {container: url}}``.
SAS_SETTING_KEY = "sas_containers"


def sas_container_urls(setting: str) -> dict[str, str]:
    """The container URLs of a SAS setting; a ``ValueError`` that never shows the setting (its URLs are secrets)."""
    try:
        urls = json.loads(setting)[SAS_SETTING_KEY]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f'a SAS storage setting is JSON like {{"{SAS_SETTING_KEY}": {{"container": "https://...?sv=..."}}}}'
        ) from None
    if not isinstance(urls, dict) or not urls or not all(isinstance(u, str) and u for u in urls.values()):
        raise ValueError(f"{SAS_SETTING_KEY} must map container names to SAS URLs")
    return {str(name): url for name, url in urls.items()}


class SasStorage(ContainerReads):
    """Blob storage reached only through per-container SAS URLs.

    Holds no key: what it can do is what each SAS grants, until it expires. A container without a SAS is
    refused here with a clear error; an operation a SAS does not permit is refused by the service (403).
    Retries have the budget of :class:`~sensor_scoring.storage.blob.BlobStorage` (the settings'
    ``SCORING_STORAGE_RETRIES`` / ``SCORING_STORAGE_RETRY_BACKOFF_S``), which a Batch task gets from its worker.
    """

    def __init__(
        self, container_urls: dict[str, str], *, retry_total: int | None = None, initial_backoff: float | None = None
    ) -> None:
        from azure.storage.blob import ContainerClient

        self.retry_total, backoff = retry_settings(retry_total, initial_backoff)
        retry = retry_policy(self.retry_total, backoff)
        options: dict[str, Any] = {
            "connection_timeout": 10,
            "read_timeout": 120,
            **http_options(),
        }
        self._clients = {
            name: ContainerClient.from_container_url(url, retry_policy=retry, **options)
            for name, url in container_urls.items()
        }

    def _container(self, container: str) -> ContainerClient:
        try:
            return self._clients[container]
        except KeyError:
            raise PermissionError(
                f"no SAS for container {container!r}: this storage only reaches {sorted(self._clients)}"
            ) from None

    def write_bytes(self, container: str, path: str, data: bytes) -> None:
        safe_path(container, path)
        self._container(container).upload_blob(path, data, overwrite=True, max_concurrency=2)

    def upload_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        safe_path(container, path)
        with open(local_path, "rb") as handle:
            self._container(container).upload_blob(path, handle, overwrite=True, max_concurrency=2)

    def download_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        safe_path(container, path)
        download_blob_to(self._container(container), path, local_path, make_uri(container, path))

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        safe_path(container, prefix, prefix=True)
        from azure.core.exceptions import ResourceNotFoundError

        client = self._container(container)

        def sdk_listing() -> list[BlobInfo]:
            try:
                return sdk_blobs(client, prefix)
            except ResourceNotFoundError:  # as BlobStorage: a container nobody wrote to yet holds nothing
                return []

        return list_blobs(client, prefix, sdk_listing)

    def exists(self, container: str, path: str) -> bool:
        safe_path(container, path)
        return bool(self._container(container).get_blob_client(path).exists())

    def delete_prefix(self, container: str, prefix: str) -> int:
        names = [info.name for info in self.list(container, prefix)]
        for start in range(0, len(names), 256):
            self._container(container).delete_blobs(*names[start : start + 256])
        return len(names)

    def generation(self, container: str, path: str) -> str | None:
        safe_path(container, path)
        return blob_generation(self._container(container).get_blob_client(path))

    def write_bytes_if(self, container: str, path: str, data: bytes, generation: str | None) -> None:
        safe_path(container, path)
        client = self._container(container).get_blob_client(path)
        conditional_upload(client, data, generation, make_uri(container, path))

    def describe(self) -> str:  # the URLs without their signatures
        return "SAS access to " + ", ".join(f"{c.url.split('?', 1)[0]}" for c in self._clients.values())


def make_sas_setting(
    storage: str | BlobStorage,
    *,
    read: list[str],
    read_write: list[str],
    hours: float,
    now: datetime | None = None,
) -> str:
    """A SAS storage setting for some containers of the account of ``storage`` (a connection string, an account
    URL, or a :class:`BlobStorage` such as the one of Airflow's connection).

    Signed with a user delegation key, obtained with the storage's Entra ID credential for the SAS's lifetime,
    when the storage authenticates with a token; with the account key when it has one. A SAS-only storage cannot
    sign (ValueError). ``read`` containers get read+list, ``read_write`` ones read+list+create+write+add, each
    its own SAS. A container SAS covers the whole container: on a flat-namespace account it cannot be narrowed
    to a folder (a directory-scoped SAS needs hierarchical namespace), so shards get the staging container, not
    only their own prefix.
    """
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    blob = storage if isinstance(storage, BlobStorage) else BlobStorage(storage)
    client = blob.service_client
    key = getattr(client.credential, "account_key", None)
    now = now or datetime.now(timezone.utc)
    start = now - timedelta(minutes=5)  # tolerate clock skew between Airflow and the Batch node
    expiry = now + timedelta(hours=hours)
    signing: dict[str, Any]
    if key:
        signing = {"account_key": key}
    elif blob.token_credential is not None:
        if expiry > now + USER_DELEGATION_MAX:
            raise ValueError(
                f"a SAS signed with a user delegation key lives at most {USER_DELEGATION_MAX.days} days; "
                f"{hours} hours asked"
            )
        # one key for the call, valid exactly as long as the SAS it signs
        signing = {"user_delegation_key": client.get_user_delegation_key(start, expiry)}
    else:
        raise ValueError(
            "SAS tokens for Batch tasks are signed with a user delegation key (Entra ID) or the account key; "
            "this storage has neither (a SAS-only connection cannot mint them)"
        )
    urls = {}
    for container in [*read, *read_write]:
        writable = container in read_write
        permission = ContainerSasPermissions(read=True, list=True, write=writable, create=writable, add=writable)
        token = generate_container_sas(
            client.account_name or blob.account_name,
            container,
            permission=permission,
            start=start,
            expiry=expiry,
            **signing,
        )
        urls[container] = f"{client.get_container_client(container).url.partition('?')[0]}?{token}"
    return json.dumps({SAS_SETTING_KEY: urls})
