"""Azure Blob Storage (or Azurite) through a connection string, and the retry budget of every blob call.

Writes are atomic per blob: a block blob becomes visible only when its block list is committed. That is the
property commit relies on to replace an hour without readers seeing half of it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode

from sensor_scoring import settings as config
from sensor_scoring.storage.base import READ_CONCURRENCY, BlobInfo, GenerationMismatch, make_uri, safe_path

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient, ExponentialRetry

#: Retry budget of blob calls (environment, so shard processes and Batch nodes get the same): how many
#: retries, and the first backoff in seconds (later ones add 2**n seconds).
RETRIES_ENV = config.STORAGE_RETRIES_ENV
RETRY_BACKOFF_ENV = config.STORAGE_RETRY_BACKOFF_ENV
#: Blobs per List Blobs page: the service's most.
LIST_PAGE_SIZE = 5000


def retry_settings(retry_total: int | None = None, initial_backoff: float | None = None) -> tuple[int, float]:
    """Explicit values, else ``SCORING_STORAGE_RETRIES`` / ``SCORING_STORAGE_RETRY_BACKOFF_S`` of the settings."""
    if retry_total is None or initial_backoff is None:
        current = config.current()
        retry_total = current.storage_retries if retry_total is None else retry_total
        initial_backoff = current.storage_retry_backoff_s if initial_backoff is None else initial_backoff
    if retry_total < 0 or initial_backoff < 0:
        raise ValueError(f"{RETRIES_ENV} and {RETRY_BACKOFF_ENV} must not be negative")
    return retry_total, initial_backoff


def retry_policy(retry_total: int, initial_backoff: float) -> ExponentialRetry:
    """The SDK's exponential retry with the whole budget for every kind of fault.

    retry_connect/read default to 3 in the SDK whatever retry_total says: an outage (connection refused)
    gets the whole budget here. Waits: initial + 2**n seconds (+- jitter), i.e. about 2 min for the default 6.
    """
    from azure.storage.blob import ExponentialRetry

    # The SDK logs every request at INFO; at Airflow's default level that floods the task log.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    # the SDK annotates the backoffs as whole seconds; fractions work (the tests wait 0.1 s, not 1 s)
    backoffs: dict[str, Any] = {"initial_backoff": initial_backoff, "random_jitter_range": min(3.0, initial_backoff)}
    return ExponentialRetry(
        increment_base=2,
        retry_total=retry_total,
        retry_connect=retry_total,
        retry_read=retry_total,
        retry_status=retry_total,
        **backoffs,
    )


#: Where ``requests`` takes a CA bundle from when it trusts the environment, in its order.
_CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def http_options() -> dict[str, Any]:
    """Client options that keep ``requests`` from reading the environment on every request when it holds no proxy.

    Trusting the environment, ``requests`` scans every variable of it for proxies again on each request: a few
    hundred microseconds of Python per blob, paid thousands of times by a folder of small files. Without a
    proxy set there is nothing to find, so it is told not to look, and the one thing it would still take from
    the environment, a CA bundle, is passed explicitly. With a proxy set, everything stays as it was.
    """
    import urllib.request

    if urllib.request.getproxies():
        return {}
    bundle = next((os.environ[name] for name in _CA_BUNDLE_ENV if os.environ.get(name)), None)
    return {"use_env_settings": False} | ({"connection_verify": bundle} if bundle else {})


class BlobStorage:
    """Azure Blob Storage through a connection string; Azurite is the same code on loopback.

    Transient faults (connection refused, 5xx, timeouts) are retried by the SDK's exponential retry policy,
    so a storage blip during a run costs time, not the run.
    """

    def __init__(
        self, connection_string: str, *, retry_total: int | None = None, initial_backoff: float | None = None
    ) -> None:
        from azure.storage.blob import BlobServiceClient

        self.retry_total, backoff = retry_settings(retry_total, initial_backoff)
        self._client = BlobServiceClient.from_connection_string(
            connection_string,
            retry_policy=retry_policy(self.retry_total, backoff),
            connection_timeout=10,
            read_timeout=120,
            **http_options(),
        )
        self._created: set[str] = set()
        self._containers: dict[str, ContainerClient] = {}

    def _container(self, container: str) -> ContainerClient:
        """One client per container, on the service client's pipeline: building a client per blob costs more
        than a small blob's request."""
        client = self._containers.get(container)
        if client is None:
            client = self._containers.setdefault(container, self._client.get_container_client(container))
        return client

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
        safe_path(container, path)
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._container(container).download_blob(path, max_concurrency=2).readall()
        except ResourceNotFoundError as exc:
            raise FileNotFoundError(make_uri(container, path)) from exc

    def read_many(self, container: str, paths: Sequence[str], concurrency: int = READ_CONCURRENCY) -> list[bytes]:
        for path in paths:
            safe_path(container, path)
        return read_blobs(self._container(container), paths, concurrency, lambda path: self.read_bytes(container, path))

    def write_bytes(self, container: str, path: str, data: bytes) -> None:
        safe_path(container, path)
        self._ensure_container(container)
        self._client.get_blob_client(container, path).upload_blob(data, overwrite=True, max_concurrency=2)

    def upload_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        safe_path(container, path)
        self._ensure_container(container)
        with open(local_path, "rb") as handle:
            # Large files go up as staged blocks; the blob switches to the new content only when the
            # block list is committed, so readers see the old or the new file, never a mix.
            self._client.get_blob_client(container, path).upload_blob(handle, overwrite=True, max_concurrency=2)

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        safe_path(container, prefix, prefix=True)
        from azure.core.exceptions import ResourceNotFoundError

        def sdk_listing() -> list[BlobInfo]:
            try:
                blobs = self._container(container).list_blobs(name_starts_with=prefix or None)
                return [BlobInfo(b.name, b.size, b.last_modified) for b in blobs]
            except ResourceNotFoundError:  # a container nobody wrote to yet holds nothing
                return []

        return list_blobs(self._container(container), prefix, sdk_listing)

    def exists(self, container: str, path: str) -> bool:
        safe_path(container, path)
        return bool(self._client.get_blob_client(container, path).exists())

    def delete_prefix(self, container: str, prefix: str) -> int:
        names = [info.name for info in self.list(container, prefix)]
        client = self._client.get_container_client(container)
        for start in range(0, len(names), 256):
            client.delete_blobs(*names[start : start + 256])
        return len(names)

    def describe(self) -> str:
        return f"blob account {self.account_name} at {self._client.url}"

    def generation(self, container: str, path: str) -> str | None:
        safe_path(container, path)
        return blob_generation(self._client.get_blob_client(container, path))

    def write_bytes_if(self, container: str, path: str, data: bytes, generation: str | None) -> None:
        safe_path(container, path)
        self._ensure_container(container)
        conditional_upload(self._client.get_blob_client(container, path), data, generation, make_uri(container, path))


def list_blobs(client: ContainerClient, prefix: str, sdk_listing: Callable[[], list[BlobInfo]]) -> list[BlobInfo]:
    """The blobs under ``prefix`` by the service's List Blobs pages, parsed for the three fields a listing gives.

    The SDK turns every listed blob into a properties object of some forty fields, which costs more than the
    service's answer for a folder of thousands of small files. The pages are fetched on the client's pipeline
    (authentication, retries, outages as with the SDK); anything but a 200 page is answered by
    ``sdk_listing``, the SDK's own listing, so a missing container and every refusal are exactly its answers.
    """
    import xml.etree.ElementTree as ET
    from email.utils import parsedate_to_datetime

    from azure.core.exceptions import AzureError
    from azure.core.rest import HttpRequest

    base, _, sas = client.url.partition("?")
    found: list[BlobInfo] = []
    marker = ""
    while True:
        query = {"restype": "container", "comp": "list", "maxresults": str(LIST_PAGE_SIZE)}
        query |= {"prefix": prefix} if prefix else {}
        query |= {"marker": marker} if marker else {}
        url = f"{base}?{urlencode(query, quote_via=quote, safe='/~')}" + (f"&{sas}" if sas else "")
        request = HttpRequest("GET", url, headers={"x-ms-version": client.api_version})
        # streamed, so that the pipeline does not parse the page into a tree first (its private pipeline: see
        # _get_blob)
        response = client._pipeline.run(request, stream=True).http_response
        try:
            page = response.read() if response.status_code == 200 else None
        except AzureError:  # cut short mid-page
            page = None
        finally:
            response.close()
        if page is None:
            return sdk_listing()
        root = ET.fromstring(page)
        for blob in root.iter("Blob"):
            name = blob.find("Name")
            text = "" if name is None or name.text is None else name.text
            found.append(
                BlobInfo(
                    unquote(text) if name is not None and name.get("Encoded") == "true" else text,
                    int(blob.findtext("Properties/Content-Length") or 0),
                    parsedate_to_datetime(blob.findtext("Properties/Last-Modified") or ""),
                )
            )
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return found


def read_blobs(
    client: ContainerClient, paths: Sequence[str], concurrency: int, read_one: Callable[[str], bytes]
) -> list[bytes]:
    """Many blobs of one container, ``concurrency`` at a time, each by one plain GET on the client's pipeline.

    The SDK's downloader costs several times a small blob's request in Python (a client per blob, a ranged
    first request, fifty response headers deserialised into properties) and that Python runs under the GIL,
    so threads do not hide it (docs/benchmarks.md, many small files). The GET goes through the same pipeline:
    the same authentication (key or SAS), retry budget and errors for a storage that stays away. Anything but
    a whole 200 answer of plain bytes (missing, refused, cut short, or stored with a Content-Encoding, which
    the downloader decodes) is read again by ``read_one``, the SDK's downloader, so errors, mid-body retries
    and the bytes are exactly those of ``read_bytes``.
    """
    if concurrency <= 1 or len(paths) <= 1:
        return [_get_blob(client, path, read_one) for path in paths]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(paths))) as pool:
        return list(pool.map(lambda path: _get_blob(client, path, read_one), paths))


def _get_blob(client: ContainerClient, path: str, read_one: Callable[[str], bytes]) -> bytes:
    """One blob's bytes by a plain GET (see :func:`read_blobs`); ``read_one`` for anything but a whole 200."""
    from azure.core.exceptions import AzureError
    from azure.core.rest import HttpRequest

    base, _, query = client.url.partition("?")  # a SAS container URL carries its token as the query
    url = f"{base}/{quote(path, safe='~/')}" + (f"?{query}" if query else "")
    request = HttpRequest("GET", url, headers={"x-ms-version": client.api_version})
    # the pipeline the container client's own operations run on (private in the SDK; stable since 12.0)
    response = client._pipeline.run(request, stream=True).http_response
    try:
        if response.status_code == 200 and not response.headers.get("Content-Encoding"):
            data = b"".join(response.iter_raw())
            length = response.headers.get("Content-Length")
            if length is not None and int(length) == len(data):
                return data
    except AzureError:  # cut short or timed out mid-body: the downloader retries it
        pass
    finally:
        response.close()
    return read_one(path)


def blob_generation(client: Any) -> str | None:
    """The blob's ETag, None if it does not exist."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return str(client.get_blob_properties().etag)
    except ResourceNotFoundError:
        return None


def conditional_upload(client: Any, data: bytes, generation: str | None, where: str) -> None:
    """Upload with If-Match on ``generation`` (If-None-Match * when None): the service checks and writes at once."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

    try:
        if generation is None:
            client.upload_blob(data, overwrite=False)
        else:
            client.upload_blob(data, overwrite=True, etag=generation, match_condition=MatchConditions.IfNotModified)
    except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError) as exc:
        raise GenerationMismatch(
            f"{where} is no longer at generation {generation or '(absent)'}: written by someone else meanwhile"
        ) from exc
