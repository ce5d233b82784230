"""Storage through container SAS URLs only: what an Azure Batch task gets instead of the account key."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sensor_scoring.storage.base import READ_CONCURRENCY, BlobInfo, make_uri, safe_path
from sensor_scoring.storage.blob import (
    blob_generation,
    conditional_upload,
    http_options,
    list_blobs,
    read_blobs,
    retry_policy,
    retry_settings,
)

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

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


class SasStorage:
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

    def _client(self, container: str) -> ContainerClient:
        try:
            return self._clients[container]
        except KeyError:
            raise PermissionError(
                f"no SAS for container {container!r}: this storage only reaches {sorted(self._clients)}"
            ) from None

    def read_bytes(self, container: str, path: str) -> bytes:
        safe_path(container, path)
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._client(container).download_blob(path, max_concurrency=2).readall()
        except ResourceNotFoundError as exc:
            raise FileNotFoundError(make_uri(container, path)) from exc

    def read_many(self, container: str, paths: Sequence[str], concurrency: int = READ_CONCURRENCY) -> list[bytes]:
        for path in paths:
            safe_path(container, path)
        return read_blobs(self._client(container), paths, concurrency, lambda path: self.read_bytes(container, path))

    def write_bytes(self, container: str, path: str, data: bytes) -> None:
        safe_path(container, path)
        self._client(container).upload_blob(path, data, overwrite=True, max_concurrency=2)

    def upload_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        safe_path(container, path)
        with open(local_path, "rb") as handle:
            self._client(container).upload_blob(path, handle, overwrite=True, max_concurrency=2)

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        safe_path(container, prefix, prefix=True)
        from azure.core.exceptions import ResourceNotFoundError

        client = self._client(container)

        def sdk_listing() -> list[BlobInfo]:
            try:
                return [
                    BlobInfo(b.name, b.size, b.last_modified)
                    for b in client.list_blobs(name_starts_with=prefix or None)
                ]
            except ResourceNotFoundError:  # as BlobStorage: a container nobody wrote to yet holds nothing
                return []

        return list_blobs(client, prefix, sdk_listing)

    def exists(self, container: str, path: str) -> bool:
        safe_path(container, path)
        return bool(self._client(container).get_blob_client(path).exists())

    def delete_prefix(self, container: str, prefix: str) -> int:
        names = [info.name for info in self.list(container, prefix)]
        for start in range(0, len(names), 256):
            self._client(container).delete_blobs(*names[start : start + 256])
        return len(names)

    def generation(self, container: str, path: str) -> str | None:
        safe_path(container, path)
        return blob_generation(self._client(container).get_blob_client(path))

    def write_bytes_if(self, container: str, path: str, data: bytes, generation: str | None) -> None:
        safe_path(container, path)
        conditional_upload(self._client(container).get_blob_client(path), data, generation, make_uri(container, path))

    def describe(self) -> str:  # the URLs without their signatures
        return "SAS access to " + ", ".join(f"{c.url.split('?', 1)[0]}" for c in self._clients.values())


def make_sas_setting(
    connection_string: str, *, read: list[str], read_write: list[str], hours: float, now: datetime | None = None
) -> str:
    """A SAS storage setting for some containers, signed with the account key of ``connection_string``.

    ``read`` containers get read+list, ``read_write`` ones read+list+create+write+add. A container SAS covers
    the whole container: on a flat-namespace account it cannot be narrowed to a folder (a directory-scoped
    SAS needs hierarchical namespace), so shards get the staging container, not only their own prefix.
    """
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    client = BlobServiceClient.from_connection_string(connection_string)
    credential = client.credential
    key = getattr(credential, "account_key", None)
    if not key:
        raise ValueError(
            "SAS tokens for Batch tasks are signed with the storage account key; the storage "
            "setting has none (a SAS-only or token connection cannot mint them)"
        )
    now = now or datetime.now(timezone.utc)
    urls = {}
    for container in [*read, *read_write]:
        writable = container in read_write
        permission = ContainerSasPermissions(read=True, list=True, write=writable, create=writable, add=writable)
        token = generate_container_sas(
            credential.account_name,
            container,
            account_key=key,
            permission=permission,
            start=now - timedelta(minutes=5),  # tolerate clock skew between Airflow and the Batch node
            expiry=now + timedelta(hours=hours),
        )
        urls[container] = f"{client.get_container_client(container).url}?{token}"
    return json.dumps({SAS_SETTING_KEY: urls})
