"""Storage with Entra ID on a real Azurite in its OAuth mode (HTTPS, ``--oauth basic``): no key anywhere.

A whole hour (land, register, plan, read, score shards, commit, model health, the fleet page's data) runs with a
token credential and an account URL as ``SCORING_STORAGE``; Azurite's debug log, which records every request of
every process with its headers, must show only bearer tokens: no ``SharedKey`` header, no key-signed SAS.

User-delegation SAS: the key is obtained from Azurite for real (with the bearer token), and the SAS it signs is
checked at the SDK boundary, field by field. It is not sent: azure-storage-blob 12.31 signs in SAS format
2026-10-06, whose string-to-sign for a user delegation key has two fields more than the newest format this Azurite
validates (2025-07-05), so Azurite refuses every user-delegation SAS of this SDK (403) whatever its content.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from dev.azurite import Azurite, TokenCredential
from sensor_scoring import fleet, settings as config, storage as st
from sensor_scoring.backends.local import LocalBackend
from sensor_scoring.contracts import ReadResult, ShardResult
from sensor_scoring.models import fitting, registry
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps import health
from sensor_scoring.steps.commit import commit
from sensor_scoring.steps.plan import plan_shards
from sensor_scoring.storage import blob as blob_module
from sensor_scoring.windows import land_windows
from tests.support.helpers import START, fleet_windows, key_use

pytestmark = [pytest.mark.azurite]
H = timedelta(hours=1)


@pytest.fixture
def entra(oauth_azurite: Azurite, containers, monkeypatch) -> TokenCredential:
    """``SCORING_STORAGE`` is the account URL; its credential is a token credential registered for the account
    (as the Airflow adapter registers its connection's), and the generated CA is the clients' bundle (passed to
    every client explicitly by ``http_options``; verification stays on)."""
    assert oauth_azurite.ca_bundle is not None
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_azurite.ca_bundle))
    monkeypatch.setenv(config.STORAGE_ENV, oauth_azurite.account_url)
    credential = TokenCredential()
    monkeypatch.setattr(blob_module, "_CREDENTIALS", {})
    st.use_credential(oauth_azurite.account_url, credential)
    return credential


def test_an_hour_runs_with_entra_id_and_never_the_key(oauth_azurite, entra, containers, caplog):
    caplog.set_level(logging.DEBUG)
    first = len(oauth_azurite.requests())
    storage = st.open_storage()  # SCORING_STORAGE = https://127.0.0.1:<port>/devstoreaccount1
    assert isinstance(storage, st.BlobStorage) and storage.token_credential is entra

    windows = fleet_windows(devices=2, tags=2, hours=3)
    land_windows(storage, containers.windows, windows)
    registry.register(storage, containers.models, fitting.train_models(windows), version="v1", params={}, promote=True)
    start = START + 2 * H
    hour = Scope(storage, containers, "entra-run", start, start + H)
    plan = plan_shards(hour, model_version="production", sensors_per_shard=2)
    assert len(plan.shards) == 2
    # each read group and shard as the local backend runs it for a task: handed only the setting, authenticated by
    # the credential registered for the account
    backend, setting = LocalBackend(mode="task"), oauth_azurite.account_url
    reads = [
        ReadResult.from_dict(backend.run_shard(r.spec_uri, storage_setting=setting, command="read-windows"), "read")
        for r in plan.reads
    ]
    results = [
        ShardResult.from_dict(backend.run_shard(s.spec_uri, storage_setting=setting), source="shard")
        for s in plan.shards
    ]
    [manifest] = commit(hour, reads, results)
    assert manifest.counts.scored == len(windows) // 3 and manifest.counts.quarantined == 0
    [healthy] = health.model_health(hour)
    assert healthy.sensors == 4
    view = fleet.fleet_view(storage, containers, start, start + H)
    assert view.missing_hours == [] and view.totals["windows"] == manifest.counts.scored
    sensor = fleet.sensor_view(storage, containers, "dev-0000", windows["tag"].iloc[0], start, start + H)
    assert len(sensor.windows) == 60

    requests = oauth_azurite.requests()[first:]
    assert len(requests) > 50, "the debug log must have seen the run's requests"
    assert key_use(requests) == []
    assert all(str(r["headers"].get("authorization", "")).startswith("Bearer ") for r in requests)
    # no token in what the storage shows, nor in any log line of the run
    token = entra.get_token("https://storage.azure.com/.default").token
    signature_free = token.rsplit(".", 1)[0]
    for shown in (repr(storage), storage.describe(), storage.child_setting(), caplog.text):
        assert signature_free not in shown
    assert storage.child_setting() == oauth_azurite.account_url  # a child process authenticates as itself

    # the check is not blind: a request with the key is seen as one
    st.BlobStorage(oauth_azurite.connection_string).exists(containers.models, "anything")
    assert len(key_use(oauth_azurite.requests()[first + len(requests) :])) == 1


def test_batch_sas_is_signed_with_a_user_delegation_key_from_azurite(oauth_azurite, entra, containers):
    storage = st.open_storage()
    storage.write_bytes(containers.models, "m.txt", b"model")
    first = len(oauth_azurite.requests())
    now = datetime.now(timezone.utc).replace(microsecond=0)
    setting = st.make_sas_setting(
        oauth_azurite.account_url, read=[containers.models], read_write=[containers.staging], hours=2, now=now
    )
    [asked] = oauth_azurite.requests()[first:]  # one key for the call, from Azurite, with the bearer token
    assert "comp=userdelegationkey" in asked["url"] and asked["headers"]["authorization"].startswith("Bearer ")

    urls = json.loads(setting)[st.SAS_SETTING_KEY]
    assert set(urls) == {containers.models, containers.staging}
    expected_permissions = {containers.models: "rl", containers.staging: "racwl"}
    for container, url in urls.items():
        parts = urlsplit(url)
        assert parts.path == f"/{oauth_azurite.account_url.rsplit('/', 1)[1]}/{container}"
        fields = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert fields["skoid"] == entra.object_id and fields["sktid"] == entra.tenant_id  # the token's identity
        assert fields["sks"] == "b" and fields["sr"] == "c" and fields["skv"] and fields["sv"] and fields["sig"]
        assert fields["sp"] == expected_permissions[container]
        st_, se = (datetime.fromisoformat(fields[k].replace("Z", "+00:00")) for k in ("st", "se"))
        skt, ske = (datetime.fromisoformat(fields[k].replace("Z", "+00:00")) for k in ("skt", "ske"))
        assert (st_, se) == (now - timedelta(minutes=5), now + 2 * H)  # lifetime as with the key
        assert skt <= st_ and ske >= se  # the key covers the SAS's lifetime, and no more
        assert ske - skt == se - st_
        assert "AccountKey" not in url and "sig" in fields
    assert isinstance(st.open_storage(setting), st.SasStorage)


def test_the_dfs_endpoint_is_the_same_account(oauth_azurite, entra, containers):
    """An account URL names the blob endpoint or the Data Lake one; both reach the same blobs."""
    assert st.account_url("https://acct.dfs.core.windows.net/") == "https://acct.blob.core.windows.net"
    storage = st.open_storage(oauth_azurite.account_url + "/")
    storage.write_bytes(containers.staging, "x.txt", b"1")
    assert [b.name for b in st.open_storage(oauth_azurite.account_url).list(containers.staging)] == ["x.txt"]


# --- Airflow's scoring_storage connection, through the provider's WasbHook, in each of its modes. ---


@pytest.fixture
def connection(monkeypatch):
    """Define ``scoring_storage`` as Airflow defines connections from the environment (a secrets backend)."""
    monkeypatch.delenv(config.STORAGE_CONN_ID_ENV, raising=False)
    monkeypatch.setattr(blob_module, "_CREDENTIALS", {})
    monkeypatch.setattr(blob_module, "_DEFAULT_CREDENTIAL", [])

    def define(**fields: object) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_SCORING_STORAGE", json.dumps({"conn_type": "wasb", **fields}))

    return define


def _account_sas(expiry_hours: float = 1) -> str:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    from dev.azurite import ACCOUNT, KEY

    return generate_account_sas(
        ACCOUNT,
        KEY,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, list=True, create=True, add=True, delete=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=expiry_hours),
    )


SECRET_MODES = {
    "connection_string": lambda az: {"extra": {"connection_string": az.connection_string}},
    "login_and_key": lambda az: {"host": az.account_url, "login": "devstoreaccount1", "password": _key()},
    "shared_access_key": lambda az: {"host": az.account_url, "extra": {"shared_access_key": _key()}},
    "sas_token": lambda az: {"host": az.account_url, "extra": {"sas_token": _account_sas()}},
    "sas_url": lambda az: {"extra": {"sas_token": f"{az.account_url}?{_account_sas()}"}},
}


def _key() -> str:
    from dev.azurite import KEY

    return KEY


@pytest.mark.parametrize("mode", sorted(SECRET_MODES))
def test_wasb_connections_with_a_key_or_sas_keep_working(mode, oauth_azurite, connection, containers, monkeypatch):
    from sensor_scoring_airflow.connections import open_storage, storage_setting

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_azurite.ca_bundle))
    connection(**SECRET_MODES[mode](oauth_azurite))
    storage = open_storage()
    assert isinstance(storage, st.BlobStorage) and storage.token_credential is None
    storage.write_bytes(containers.staging, "a/b.txt", b"by " + mode.encode())
    child = st.open_storage(storage_setting())  # what a shard's child process is handed: the same account
    assert [b.name for b in child.list(containers.staging)] == ["a/b.txt"]
    assert child.read_bytes(containers.staging, "a/b.txt") == b"by " + mode.encode()
    assert "sig=" not in repr(storage) and _key() not in repr(storage)
    if mode.startswith("sas"):
        with pytest.raises(ValueError, match="has neither"):  # a SAS cannot sign the shards' SAS
            st.make_sas_setting(storage, read=[containers.models], read_write=[], hours=1)


@pytest.mark.parametrize(
    "extra, client_id",
    [
        (
            {"managed_identity_client_id": "c1d-user-assigned", "workload_identity_tenant_id": "t3nant"},
            "c1d-user-assigned",
        ),
        ({}, None),  # no authentication field at all: DefaultAzureCredential, the system-assigned identity here
    ],
)
def test_a_managed_identity_connection_needs_no_secret(
    extra, client_id, oauth_azurite, connection, managed_identity, containers, monkeypatch
):
    """Through a real managed-identity endpoint on loopback (App Service's protocol): the connection holds the
    account URL and, for a user-assigned identity, its client id; nothing secret."""
    from sensor_scoring_airflow.connections import open_storage, storage_setting

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_azurite.ca_bundle))
    connection(host=oauth_azurite.account_url, extra=extra)
    first = len(oauth_azurite.requests())
    storage = open_storage()
    assert storage.token_credential is not None
    storage.write_bytes(containers.models, "m.txt", b"model")
    setting = storage_setting()
    assert setting == oauth_azurite.account_url  # no secret travels to a shard
    assert st.open_storage(setting).read_bytes(containers.models, "m.txt") == b"model"  # the connection's identity
    sas = json.loads(st.make_sas_setting(setting, read=[containers.models], read_write=[], hours=1))
    fields = parse_qs(urlsplit(sas[st.SAS_SETTING_KEY][containers.models]).query)
    assert fields["skoid"] == [managed_identity.object_id(client_id)]  # delegated by the managed identity
    assert managed_identity.asked and all(a.get("client_id") == client_id for a in managed_identity.asked)
    requests = oauth_azurite.requests()[first:]
    assert requests and key_use(requests) == []


def test_outside_airflow_an_account_url_authenticates_as_the_process_identity(
    oauth_azurite, managed_identity, containers, monkeypatch
):
    """The CLI and a shard's child process: ``SCORING_STORAGE`` is the account URL and DefaultAzureCredential
    finds the machine's managed identity; the shard command runs in a fresh interpreter, as on Batch."""
    from tests.support.helpers import planned_hour

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_azurite.ca_bundle))
    monkeypatch.setattr(blob_module, "_CREDENTIALS", {})
    monkeypatch.setattr(blob_module, "_DEFAULT_CREDENTIAL", [])
    monkeypatch.setenv(config.STORAGE_ENV, oauth_azurite.account_url)
    first = len(oauth_azurite.requests())
    storage = st.open_storage()
    _, [shard] = planned_hour(storage, containers, "mi-run", devices=1, tags=1, sensors_per_shard=5)
    result = LocalBackend(mode="process").run_shard(shard["spec_uri"], storage_setting=oauth_azurite.account_url)
    assert result["scored"] == 60
    requests = oauth_azurite.requests()[first:]
    assert len(managed_identity.asked) >= 2  # this process and the shard's own
    assert requests and key_use(requests) == []


def test_service_principal_and_workload_identity_connections_at_the_sdk_boundary(
    oauth_azurite, connection, tmp_path, monkeypatch
):
    """Modes that need Entra ID itself to issue the token (not run here): the hook's credential is the right one,
    it is what the account authenticates with in this process, and no secret is shown or handed to a shard."""
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    from sensor_scoring_airflow.connections import open_storage, storage_setting

    url = oauth_azurite.account_url
    connection(host=url, login="app-id", password="app-s3cret", extra={"tenant_id": "tenant-x"})
    storage = open_storage()
    credential = storage.token_credential
    assert isinstance(credential, ClientSecretCredential)
    assert blob_module.credential_for(url) is credential  # shards in this process authenticate as the app
    assert storage_setting() == url
    assert all("app-s3cret" not in shown for shown in (repr(storage), storage.describe(), storage_setting()))

    # AKS workload identity: the webhook injects the federated token file, client and tenant ids
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("federated-token")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_CLIENT_ID", "wi-client")
    monkeypatch.setenv("AZURE_TENANT_ID", "wi-tenant")
    connection(host=url, extra={"managed_identity_client_id": "wi-client", "workload_identity_tenant_id": "wi-tenant"})
    storage = open_storage()
    assert isinstance(storage.token_credential, DefaultAzureCredential)
    chain = [type(c).__name__ for c in storage.token_credential.credentials]
    assert chain.index("WorkloadIdentityCredential") < chain.index("ManagedIdentityCredential")
    assert blob_module.credential_for(url) is storage.token_credential and storage_setting() == url

    # a Data Lake Gen2 account named by its dfs endpoint: the Blob API goes to its blob endpoint
    connection(host="https://lake.dfs.core.windows.net/", extra={})
    assert open_storage().service_client.url.startswith("https://lake.blob.core.windows.net")
    assert storage_setting() == "https://lake.blob.core.windows.net"


@pytest.mark.airflow
def test_the_dag_scores_an_hour_through_a_managed_identity_connection(
    sensor_dag, oauth_azurite, connection, managed_identity, containers, tmp_path, monkeypatch
):
    """The DAG as a deployment runs it (``dag.test``): ``scoring_storage`` holds the account URL and a
    user-assigned identity's client id, nothing secret; every task's request carries a bearer token."""
    from tests.support.partitions import read_partition

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(oauth_azurite.ca_bundle))
    monkeypatch.setenv(config.STORAGE_ENV, str(tmp_path / "not-used"))
    extra = {"managed_identity_client_id": "c1d-airflow", "workload_identity_tenant_id": "t3nant"}
    connection(host=oauth_azurite.account_url, extra=extra)
    from sensor_scoring_airflow.connections import open_storage

    storage = open_storage()
    windows = fleet_windows(devices=2, tags=2, hours=3)
    land_windows(storage, containers.windows, windows)
    registry.register(storage, containers.models, fitting.train_models(windows), version="v1", params={}, promote=True)
    first = len(oauth_azurite.requests())
    run = sensor_dag.test(logical_date=START + 3 * H, run_conf={"settle_minutes": 0, "sensors_per_shard": 2})
    assert str(run.state) == "success"
    predictions, manifest = read_partition(storage, containers.predictions, START + 2 * H)
    assert manifest["counts"]["scored"] == len(predictions) == 240
    healthy, _ = read_partition(storage, containers.health, START + 2 * H)
    assert len(healthy) == 4
    requests = oauth_azurite.requests()[first:]
    assert len(requests) > 30 and key_use(requests) == []
    assert all(str(r["headers"].get("authorization", "")).startswith("Bearer ") for r in requests)
    assert {a.get("client_id") for a in managed_identity.asked} == {"c1d-airflow"}


def test_an_unusable_connection_is_an_error_naming_it_not_its_secret(connection):
    from sensor_scoring_airflow.connections import open_storage

    secret = "c2VjcmV0LWtleS1vZi10aGUtYWNjb3VudA=="
    connection(extra={"connection_string": f"AccountName=acct;AcountKey={secret}"})
    with pytest.raises(
        st.StorageSettingError, match="^Airflow connection 'scoring_storage' gives no usable"
    ) as refused:
        open_storage()
    assert secret not in str(refused.value)
