"""Azure Blob Storage (or Azurite) by a connection string or by an account URL with Entra ID, and the retry budget
of every blob call.

Writes are atomic per blob: a block blob becomes visible only when its block list is committed. That is the
property commit relies on to replace an hour without readers seeing half of it.

An account URL authenticates with a token credential: the one registered for that account in this process
(:func:`use_credential`: Airflow's ``scoring_storage`` connection, through the provider's ``WasbHook``), else
azure-identity's ``DefaultAzureCredential``. The credential object lives in the SDK's pipeline; no token is kept,
shown or logged here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from sensor_scoring import settings as config
from sensor_scoring.storage.base import (
    READ_CONCURRENCY,
    BlobInfo,
    BlobStat,
    GenerationMismatch,
    check_range,
    make_uri,
    safe_path,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry

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


class AccountUrlError(ValueError):
    """An account URL of no usable form; the message never shows the URL (it might carry a SAS)."""


def account_url(url: str) -> str:
    """The blob endpoint of a storage account URL: ``https://<account>.blob.core.windows.net``, from that or from
    the Data Lake (``dfs``) endpoint of the same account, which serves the same data to other APIs.

    Only https (Entra ID tokens are never sent in clear), nothing but the account (an endpoint by IP address or a
    one-label host, such as Azurite's, names it as the one path segment), no query: a SAS goes in a connection
    string or a SAS setting.
    """
    parts = urlsplit(url.strip())
    if parts.scheme != "https":
        raise AccountUrlError(f"an account URL must be https (tokens are not sent over {parts.scheme or 'no scheme'})")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise AccountUrlError(
            "an account URL carries no query, fragment or credentials (a SAS goes in a connection string "
            "BlobEndpoint=...;SharedAccessSignature=...)"
        )
    host = (parts.hostname or "").lower()
    labels = host.split(".")
    if not host or not all(labels):
        raise AccountUrlError("an account URL needs a host name")
    if len(labels) > 2 and labels[1] == "dfs":  # <account>.dfs.core.windows.net (and the other clouds)
        labels[1] = "blob"
    segments = [seg for seg in parts.path.split("/") if seg]
    if len(segments) > 1 or (segments and "." in host and not _is_ip(host)):  # <account>.<domain>/x: x is a container
        raise AccountUrlError("an account URL names the account only, not a container or a blob")
    port = f":{parts.port}" if parts.port else ""
    return f"https://{'.'.join(labels)}{port}" + (f"/{segments[0]}" if segments else "")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


#: Token credentials an adapter registered per account URL, for code that only has the storage setting.
_CREDENTIALS: dict[str, TokenCredential] = {}
_DEFAULT_CREDENTIAL: list[TokenCredential] = []
_CREDENTIALS_LOCK = threading.Lock()


def use_credential(url: str, credential: TokenCredential) -> None:
    """Authenticate the account at ``url`` with ``credential`` in this process (see :func:`credential_for`).

    How a credential that is not ``DefaultAzureCredential``'s (an Airflow connection's service principal, a
    managed identity's client id) reaches code that is handed only the setting, such as a backend's shard.
    """
    with _CREDENTIALS_LOCK:
        _CREDENTIALS[account_url(url)] = credential


def credential_for(url: str) -> TokenCredential:
    """The credential registered for the account at ``url``, else one ``DefaultAzureCredential`` per process
    (it caches its tokens: one per process, not one per storage object)."""
    with _CREDENTIALS_LOCK:
        registered = _CREDENTIALS.get(account_url(url))
        if registered is not None:
            return registered
        if not _DEFAULT_CREDENTIAL:
            from azure.identity import DefaultAzureCredential

            _DEFAULT_CREDENTIAL.append(DefaultAzureCredential())
        return _DEFAULT_CREDENTIAL[0]


def is_folder_marker(name: str, size: int, metadata: Mapping[str, str] | None = None, resource_type: str = "") -> bool:
    """Whether a listed blob is a directory, not data: an empty blob named like a folder (``.../``), marked
    ``hdi_isfolder=true`` (what Data Lake Gen2 accounts, Storage Explorer and azcopy make for a directory), or
    listed as a directory by a hierarchical-namespace account. A blob with bytes is data whatever it is called."""
    if size:
        return False
    folder = any(
        key.lower() == "hdi_isfolder" and str(value).lower() == "true" for key, value in (metadata or {}).items()
    )
    return name.endswith("/") or folder or resource_type.lower() == "directory"


def _client_options(retry_total: int, initial_backoff: float) -> dict[str, Any]:
    """The options of every client of this module: the retry budget, the timeouts and the transport's."""
    return {
        "retry_policy": retry_policy(retry_total, initial_backoff),
        "connection_timeout": 10,
        "read_timeout": 120,
        **http_options(),
    }


class ContainerReads:
    """The reads every blob storage makes the same way once it has a container's client: one code path for
    :class:`BlobStorage` (a service client) and ``SasStorage`` (per-container SAS URLs)."""

    def _container(self, container: str) -> ContainerClient:
        raise NotImplementedError

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

    def stat(self, container: str, path: str) -> BlobStat:
        safe_path(container, path)
        return blob_stat(self._container(container).get_blob_client(path), make_uri(container, path))

    def read_range(self, container: str, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        safe_path(container, path)
        client = self._container(container).get_blob_client(path)
        return read_blob_range(client, offset, length, version, make_uri(container, path))


class BlobStorage(ContainerReads):
    """Azure Blob Storage through a connection string (key or SAS) or an account URL with a token credential;
    Azurite is the same code on loopback.

    Transient faults (connection refused, 5xx, timeouts) are retried by the SDK's exponential retry policy,
    so a storage blip during a run costs time, not the run.
    """

    def __init__(
        self,
        setting: str,
        *,
        credential: TokenCredential | None = None,
        retry_total: int | None = None,
        initial_backoff: float | None = None,
    ) -> None:
        """``setting``: a connection string, or an account URL (:func:`account_url`) authenticated with
        ``credential``, else with :func:`credential_for` of it."""
        from azure.storage.blob import BlobServiceClient

        self.retry_total, backoff = retry_settings(retry_total, initial_backoff)
        options = _client_options(self.retry_total, backoff)
        if "=" not in setting.split("://", 1)[0] and "://" in setting:
            url = account_url(setting)
            self._client = BlobServiceClient(url, credential=credential or credential_for(url), **options)
        else:
            self._client = BlobServiceClient.from_connection_string(setting, **options)
        self._created: set[str] = set()
        self._containers: dict[str, ContainerClient] = {}

    @classmethod
    def from_service_client(
        cls, client: BlobServiceClient, *, retry_total: int | None = None, initial_backoff: float | None = None
    ) -> BlobStorage:
        """The account and credential of a client someone else built (the provider's ``WasbHook``, which knows
        every mode of Airflow's wasb connections), on a client with this module's retry budget and options."""
        from azure.storage.blob import BlobServiceClient

        base, sep, query = client.url.partition("?")
        try:  # a Data Lake (dfs) endpoint in the connection's host: its blob endpoint serves the Blob API
            base = account_url(base)
        except AccountUrlError:  # http (Azurite with a key) or a form of its own: as the hook built it
            pass
        storage = cls.__new__(cls)
        storage.retry_total, backoff = retry_settings(retry_total, initial_backoff)
        storage._client = BlobServiceClient(
            base + sep + query, credential=client.credential, **_client_options(storage.retry_total, backoff)
        )
        storage._created, storage._containers = set(), {}
        return storage

    @property
    def service_client(self) -> BlobServiceClient:
        """The SDK's service client (what signs SAS URLs); its credential is the SDK's, never copied here."""
        return self._client

    @property
    def token_credential(self) -> TokenCredential | None:
        """The Entra ID credential this storage authenticates with; None with a key, a SAS or anonymously."""
        credential = self._client.credential
        return credential if hasattr(credential, "get_token") else None

    def child_setting(self) -> str:
        """The setting that opens this account in another process (a shard's child, ``SCORING_STORAGE``).

        A key or a SAS travels as a connection string, as it always did; a token credential does not travel at
        all: the other process gets the account URL and authenticates as itself (``DefaultAzureCredential``:
        the same managed or workload identity on the same machine).
        """
        base, _, query = self._client.url.partition("?")
        base = base.rstrip("/")
        credential = self._client.credential
        key = getattr(credential, "account_key", None)
        if key:
            protocol = urlsplit(base).scheme
            account = f"AccountName={self.account_name};AccountKey={key}"
            return f"DefaultEndpointsProtocol={protocol};{account};BlobEndpoint={base};"
        signature = getattr(credential, "signature", None) or query
        if signature:
            return f"BlobEndpoint={base};SharedAccessSignature={signature.lstrip('?')}"
        return account_url(base)

    def __repr__(self) -> str:
        return f"BlobStorage({self.describe()})"

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

    def download_file(self, container: str, path: str, local_path: str | os.PathLike[str]) -> None:
        safe_path(container, path)
        download_blob_to(self._container(container), path, local_path, make_uri(container, path))

    def list(self, container: str, prefix: str = "") -> list[BlobInfo]:
        safe_path(container, prefix, prefix=True)
        from azure.core.exceptions import ResourceNotFoundError

        def sdk_listing() -> list[BlobInfo]:
            try:
                return sdk_blobs(self._container(container), prefix)
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

    def describe(self) -> str:  # the URL without a SAS it may carry
        return f"blob account {self.account_name} at {self._client.url.partition('?')[0]}"

    def generation(self, container: str, path: str) -> str | None:
        safe_path(container, path)
        return blob_generation(self._client.get_blob_client(container, path))

    def write_bytes_if(self, container: str, path: str, data: bytes, generation: str | None) -> None:
        safe_path(container, path)
        self._ensure_container(container)
        conditional_upload(self._client.get_blob_client(container, path), data, generation, make_uri(container, path))


def sdk_blobs(client: ContainerClient, prefix: str) -> list[BlobInfo]:
    """The blobs under ``prefix`` by the SDK's listing, without folder markers (:func:`is_folder_marker`)."""
    blobs = client.list_blobs(name_starts_with=prefix or None, include=["metadata"])
    return [
        BlobInfo(b.name, b.size, b.last_modified) for b in blobs if not is_folder_marker(b.name, b.size, b.metadata)
    ]


def list_blobs(client: ContainerClient, prefix: str, sdk_listing: Callable[[], list[BlobInfo]]) -> list[BlobInfo]:
    """The blobs under ``prefix`` by the service's List Blobs pages, parsed for the three fields a listing gives.

    Folder markers are not blobs of data and are left out (:func:`is_folder_marker`): a directory of a Data Lake
    Gen2 account, or one Storage Explorer or azcopy made, is never read as a file nor counted as one.

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
        query = {"restype": "container", "comp": "list", "maxresults": str(LIST_PAGE_SIZE), "include": "metadata"}
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
            text = unquote(text) if name is not None and name.get("Encoded") == "true" else text
            size = int(blob.findtext("Properties/Content-Length") or 0)
            listed = blob.find("Metadata")
            metadata = {} if listed is None else {item.tag: item.text or "" for item in listed}
            if is_folder_marker(text, size, metadata, blob.findtext("Properties/ResourceType") or ""):
                continue
            found.append(BlobInfo(text, size, parsedate_to_datetime(blob.findtext("Properties/Last-Modified") or "")))
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


def download_blob_to(client: ContainerClient, path: str, local_path: str | os.PathLike[str], where: str) -> None:
    """Stream a blob into a local file by the SDK's downloader (ranged GETs of a few MiB, two in flight, each
    retried by the client's policy), so memory holds a few chunks, never the blob; ``FileNotFoundError`` when
    it does not exist, and no partial file left behind when the download fails."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        downloader = client.download_blob(path, max_concurrency=2)
    except ResourceNotFoundError as exc:
        raise FileNotFoundError(where) from exc
    try:
        with open(local_path, "wb") as handle:
            downloader.readinto(handle)
    except BaseException:
        Path(local_path).unlink(missing_ok=True)
        raise


def blob_stat(client: Any, where: str) -> BlobStat:
    """The blob's size and ETag by one Get Blob Properties (no body); ``FileNotFoundError`` when missing."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        properties = client.get_blob_properties()
    except ResourceNotFoundError as exc:
        raise FileNotFoundError(where) from exc
    return BlobStat(size=int(properties.size), version=str(properties.etag))


def read_blob_range(client: Any, offset: int, length: int, version: str | None, where: str) -> bytes:
    """One ranged Get Blob (``x-ms-range``), If-Match ``version`` when given (``GenerationMismatch`` once the blob
    was written since); fewer bytes where the blob ends, none from its end on (the service's 416)."""
    from azure.core import MatchConditions
    from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError

    check_range(offset, length)
    if length == 0:
        return b""
    condition: dict[str, Any] = {}
    if version is not None:
        condition = {"etag": version, "match_condition": MatchConditions.IfNotModified}
    try:
        data: bytes = client.download_blob(offset=offset, length=length, max_concurrency=1, **condition).readall()
    except ResourceNotFoundError as exc:
        raise FileNotFoundError(where) from exc
    except ResourceModifiedError as exc:
        raise GenerationMismatch(f"{where} was written since version {version}: read it again") from exc
    except HttpResponseError as exc:
        if exc.status_code == 416:  # the range starts at or after the blob's end
            return b""
        raise
    return data


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
