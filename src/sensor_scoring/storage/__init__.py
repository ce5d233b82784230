"""The one module that knows where bytes live: Azure Blob Storage (or Azurite) and a local directory.

Every other module speaks in (container, path) pairs or ``az://container/path`` URIs, so the same code runs
against Azure, Azurite and a plain folder. Writes are atomic per blob: a block blob becomes visible only when
its block list is committed, and a local file is written beside its target and renamed over it. That is the
property commit relies on to replace an hour without readers seeing half of it.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sensor_scoring import settings as config

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

URI_SCHEME = "az://"


@dataclass(frozen=True)
class BlobInfo:
    """What a listing tells about one blob."""

    name: str
    size: int
    last_modified: datetime


class Storage(Protocol):
    """The operations the pipeline needs; nothing else is used, so a new backend stays small."""

    def read_bytes(self, container: str, path: str) -> bytes: ...

    def write_bytes(self, container: str, path: str, data: bytes) -> None: ...

    def upload_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None: ...

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]: ...

    def exists(self, container: str, path: str) -> bool: ...

    def delete_prefix(self, container: str, prefix: str) -> int: ...

    def describe(self) -> str: ...


def make_uri(container: str, path: str) -> str:
    """``az://container/path``: the form shard specs and XCom carry (no account, no secret)."""
    return f"{URI_SCHEME}{container}/{path}"


def parse_uri(uri: str) -> tuple[str, str]:
    """Split an ``az://container/path`` URI; a clear error for anything else."""
    if not uri.startswith(URI_SCHEME):
        raise ValueError(f"expected a URI like az://container/path, got {uri!r}")
    container, _, path = uri[len(URI_SCHEME):].partition("/")
    if not container or not path:
        raise ValueError(f"URI {uri!r} needs both a container and a path")
    return container, path


class LocalStorage:
    """A directory per container under ``root``: for laptops without Node and for unit tests."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, container: str, path: str) -> Path:
        full = (self.root / container / path).resolve()
        if not str(full).startswith(str(self.root.resolve())):
            raise ValueError(f"path {path!r} escapes the storage root")
        return full

    def read_bytes(self, container: str, path: str) -> bytes:
        return self._path(container, path).read_bytes()

    def write_bytes(self, container: str, path: str, data: bytes) -> None:
        target = self._path(container, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def upload_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        target = self._path(container, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        base = self.root / container
        start = base / prefix.rsplit("/", 1)[0] if "/" in prefix else base  # walk only below the prefix's folder
        if not start.is_dir():
            return []
        found = []
        for file in start.rglob("*"):
            if not file.is_file() or file.name.startswith(".tmp-"):
                continue
            name = file.relative_to(base).as_posix()
            if name.startswith(prefix):
                stat = file.stat()
                found.append(
                    BlobInfo(name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc))
                )
        return sorted(found, key=lambda info: info.name)

    def exists(self, container: str, path: str) -> bool:
        return self._path(container, path).is_file()

    def delete_prefix(self, container: str, prefix: str) -> int:
        blobs = self.list(container, prefix)
        for info in blobs:
            self._path(container, info.name).unlink(missing_ok=True)
        return len(blobs)

    def describe(self) -> str:
        return f"local directory {self.root}"


class BlobStorage:
    """Azure Blob Storage through a connection string; Azurite is the same code on loopback.

    Transient faults (connection refused, 5xx, timeouts) are retried by the SDK's exponential retry policy,
    so a storage blip during a run costs time, not the run.
    """

    def __init__(self, connection_string: str, *, retry_total: int | None = None, initial_backoff: float | None = None) -> None:
        from azure.storage.blob import BlobServiceClient, ExponentialRetry

        # The SDK logs every request at INFO; at Airflow's default level that floods the task log.
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        retry_total, initial_backoff = retry_settings(retry_total, initial_backoff)
        self.retry_total = retry_total
        # retry_connect/read default to 3 in the SDK whatever retry_total says: an outage (connection refused)
        # gets the whole budget. Waits: initial + 2**n seconds (+- jitter), i.e. about 2 min for the default 6.
        retry = ExponentialRetry(initial_backoff=initial_backoff, increment_base=2, retry_total=retry_total,
                                 retry_connect=retry_total, retry_read=retry_total, retry_status=retry_total,
                                 random_jitter_range=min(3.0, initial_backoff))
        self._client = BlobServiceClient.from_connection_string(
            connection_string, retry_policy=retry, connection_timeout=10, read_timeout=120
        )
        self._created: set[str] = set()

    @property
    def account_name(self) -> str:
        return self._client.account_name or "?"

    def _ensure_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        if container in self._created:
            return
        try:
            self._client.create_container(container)
        except ResourceExistsError:
            pass
        self._created.add(container)

    def read_bytes(self, container: str, path: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._client.get_blob_client(container, path).download_blob(max_concurrency=2).readall()
        except ResourceNotFoundError as exc:
            raise FileNotFoundError(make_uri(container, path)) from exc

    def write_bytes(self, container: str, path: str, data: bytes) -> None:
        self._ensure_container(container)
        self._client.get_blob_client(container, path).upload_blob(data, overwrite=True, max_concurrency=2)

    def upload_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        self._ensure_container(container)
        with open(local_path, "rb") as handle:
            # Large files go up as staged blocks; the blob switches to the new content only when the
            # block list is committed, so readers see the old or the new file, never a mix.
            self._client.get_blob_client(container, path).upload_blob(handle, overwrite=True, max_concurrency=2)

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            blobs = self._client.get_container_client(container).list_blobs(name_starts_with=prefix or None)
            return [BlobInfo(b.name, b.size, b.last_modified) for b in blobs]
        except ResourceNotFoundError:
            return []

    def exists(self, container: str, path: str) -> bool:
        return bool(self._client.get_blob_client(container, path).exists())

    def delete_prefix(self, container: str, prefix: str) -> int:
        names = [info.name for info in self.list(container, prefix)]
        client = self._client.get_container_client(container)
        for start in range(0, len(names), 256):
            client.delete_blobs(*names[start:start + 256])
        return len(names)

    def describe(self) -> str:
        return f"blob account {self.account_name} at {self._client.url}"


#: Retry budget of blob calls (environment, so shard processes and Batch nodes get the same): how many
#: retries, and the first backoff in seconds (later ones add 2**n seconds).
RETRIES_ENV = "SCORING_STORAGE_RETRIES"
RETRY_BACKOFF_ENV = "SCORING_STORAGE_RETRY_BACKOFF_S"


def retry_settings(retry_total: int | None = None, initial_backoff: float | None = None) -> tuple[int, float]:
    """Explicit values, else ``SCORING_STORAGE_RETRIES`` / ``SCORING_STORAGE_RETRY_BACKOFF_S``, else 6 and 1 s."""
    total = retry_total if retry_total is not None else int(os.environ.get(RETRIES_ENV) or 6)
    backoff = initial_backoff if initial_backoff is not None else float(os.environ.get(RETRY_BACKOFF_ENV) or 1.0)
    if total < 0 or backoff < 0:
        raise ValueError(f"{RETRIES_ENV} and {RETRY_BACKOFF_ENV} must not be negative")
    return total, backoff


def is_connection_string(setting: str) -> bool:
    """Connection strings are ``key=value;...``; anything else is taken as a directory."""
    return "=" in setting and (";" in setting or setting.lower().startswith("usedevelopmentstorage"))


def open_storage(setting: str | None = None) -> Storage:
    """Storage for a setting (connection string or directory); ``SCORING_STORAGE`` when not given."""
    setting = setting or config.storage_setting()
    if is_sas_setting(setting):
        return SasStorage.from_setting(setting)
    if is_connection_string(setting):
        return BlobStorage(setting)
    path = setting[len("file://"):] if setting.startswith("file://") else setting
    return LocalStorage(path)


# --- Storage through container SAS URLs only: what an Azure Batch task gets instead of the account key. ---

SAS_SETTING_KEY = "sas_containers"


def is_sas_setting(setting: str) -> bool:
    """A SAS setting is a JSON object ``{"sas_containers": {container: url}}``; connection strings never start with ``{``."""
    return setting.lstrip().startswith("{")


class SasStorage:
    """Blob storage reached only through per-container SAS URLs.

    Holds no key: what it can do is what each SAS grants, until it expires. A container without a SAS is
    refused here with a clear error; an operation a SAS does not permit is refused by the service (403).
    """

    def __init__(self, container_urls: dict[str, str], *, retry_total: int = 6, initial_backoff: float = 1.0) -> None:
        from azure.storage.blob import ContainerClient, ExponentialRetry

        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        retry = ExponentialRetry(initial_backoff=initial_backoff, increment_base=2, retry_total=retry_total)
        self._clients = {
            name: ContainerClient.from_container_url(url, retry_policy=retry, connection_timeout=10, read_timeout=120)
            for name, url in container_urls.items()
        }

    @classmethod
    def from_setting(cls, setting: str) -> SasStorage:
        import json

        try:
            urls = json.loads(setting)[SAS_SETTING_KEY]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f'a SAS storage setting is JSON like {{"{SAS_SETTING_KEY}": {{"container": "https://...?sv=..."}}}}') from exc
        if not isinstance(urls, dict) or not urls:
            raise ValueError(f"{SAS_SETTING_KEY} must map container names to SAS URLs")
        return cls({str(k): str(v) for k, v in urls.items()})

    def _client(self, container: str):
        try:
            return self._clients[container]
        except KeyError:
            raise PermissionError(
                f"no SAS for container {container!r}: this storage only reaches {sorted(self._clients)}"
            ) from None

    def read_bytes(self, container: str, path: str) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._client(container).download_blob(path, max_concurrency=2).readall()
        except ResourceNotFoundError as exc:
            raise FileNotFoundError(make_uri(container, path)) from exc

    def write_bytes(self, container: str, path: str, data: bytes) -> None:
        self._client(container).upload_blob(path, data, overwrite=True, max_concurrency=2)

    def upload_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        with open(local_path, "rb") as handle:
            self._client(container).upload_blob(path, handle, overwrite=True, max_concurrency=2)

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        blobs = self._client(container).list_blobs(name_starts_with=prefix or None)
        return [BlobInfo(b.name, b.size, b.last_modified) for b in blobs]

    def exists(self, container: str, path: str) -> bool:
        return bool(self._client(container).get_blob_client(path).exists())

    def delete_prefix(self, container: str, prefix: str) -> int:
        names = [info.name for info in self.list(container, prefix)]
        for start in range(0, len(names), 256):
            self._client(container).delete_blobs(*names[start:start + 256])
        return len(names)

    def describe(self) -> str:  # the URLs without their signatures
        return "SAS access to " + ", ".join(f"{c.url.split('?', 1)[0]}" for c in self._clients.values())


def make_sas_setting(connection_string: str, *, read: list[str], read_write: list[str], hours: float,
                     now: datetime | None = None) -> str:
    """A SAS storage setting for some containers, signed with the account key of ``connection_string``.

    ``read`` containers get read+list, ``read_write`` ones read+list+create+write+add. A container SAS covers
    the whole container: on a flat-namespace account it cannot be narrowed to a folder (a directory-scoped
    SAS needs hierarchical namespace), so shards get the staging container, not only their own prefix.
    """
    import json
    from datetime import timedelta

    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    client = BlobServiceClient.from_connection_string(connection_string)
    credential = client.credential
    key = getattr(credential, "account_key", None)
    if not key:
        raise ValueError("SAS tokens for Batch tasks are signed with the storage account key; the storage "
                         "setting has none (a SAS-only or token connection cannot mint them)")
    now = now or datetime.now(timezone.utc)
    urls = {}
    for container in [*read, *read_write]:
        writable = container in read_write
        permission = ContainerSasPermissions(read=True, list=True, write=writable, create=writable, add=writable)
        token = generate_container_sas(
            credential.account_name, container, account_key=key, permission=permission,
            start=now - timedelta(minutes=5),  # tolerate clock skew between Airflow and the Batch node
            expiry=now + timedelta(hours=hours),
        )
        urls[container] = f"{client.get_container_client(container).url}?{token}"
    return json.dumps({SAS_SETTING_KEY: urls})


# --- Parquet in and out of blobs: one encoding for staging, partitions, model indexes and labels. ---

def parquet_bytes(frame: pd.DataFrame, schema: pa.Schema | None = None) -> bytes:
    """A frame as one Parquet file's bytes (cast to ``schema`` when given), without the pandas index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


def parquet_frame(data: bytes) -> pd.DataFrame:
    """The frame in one Parquet file's bytes."""
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pandas()


def read_parquet(storage: Storage, container: str, path: str) -> pd.DataFrame:
    return parquet_frame(storage.read_bytes(container, path))
