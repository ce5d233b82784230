"""The storage setting is one of a few strict forms; anything else is an error that names the setting, not its value."""

from __future__ import annotations

import json

import pytest

from sensor_scoring import settings as config, storage as st

KEY = "c2VjcmV0LWtleS1vZi10aGUtYWNjb3VudA=="  # an account key's shape; none of the messages may show it


@pytest.mark.parametrize(
    "setting",
    [
        "UseDevelopmentStorage=true",
        "usedevelopmentstorage=true;",
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net",
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
        "BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=sv=2020-08-04&sig=x%3D",
    ],
)
def test_connection_strings_open_blob_storage(setting):
    assert st.parse_setting(setting).kind == "connection_string"
    assert isinstance(st.open_storage(setting), st.BlobStorage)


def test_a_sas_setting_opens_sas_storage():
    setting = json.dumps({st.SAS_SETTING_KEY: {"models": "https://acct.blob.core.windows.net/models?sv=1&sig=x"}})
    assert st.parse_setting(setting).kind == "sas"
    assert isinstance(st.open_storage(setting), st.SasStorage)


def test_absolute_paths_and_file_urls_open_a_local_directory(tmp_path):
    partition_like = tmp_path / "date=2026-01-01"  # an "=" does not make a path a connection string
    for setting, root in [
        (str(tmp_path), tmp_path),
        (f"file://{tmp_path}", tmp_path),
        (str(partition_like), partition_like),
        ("file://data/scoring", "data/scoring"),
    ]:
        assert st.parse_setting(setting).kind == "directory"
        storage = st.open_storage(setting)
        assert isinstance(storage, st.LocalStorage) and str(storage.root) == str(root)


def test_the_setting_defaults_to_scoring_storage_of_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(config.STORAGE_ENV, str(tmp_path))
    storage = st.open_storage()
    assert isinstance(storage, st.LocalStorage) and storage.root == tmp_path


@pytest.mark.parametrize(
    "setting, problem",
    [
        (f"DefaultEndpointsProtocol=https;AccountName=acct;AcountKey={KEY}", "neither AccountName with AccountKey"),
        (f"AccountName=acct;AccountKey {KEY.rstrip('=')}", "part 2 is not key=value"),
        (f"AccountKey={KEY};EndpointSuffix=core.windows.net", "neither AccountName with AccountKey nor BlobEndpoint"),
        ("UseDevelopmentStorage=TRUE", "UseDevelopmentStorage must be true"),
        ("relative/folder", "absolute path or file://"),
        (f"relative/folder/{KEY}", "not a usable connection string"),
        ("", "is empty"),
        ("file://", "without a path"),
        (json.dumps({"containers": {"models": f"https://x/models?sig={KEY}"}}), "not a usable SAS setting"),
        (json.dumps({st.SAS_SETTING_KEY: {"models": ""}}), "must map container names to SAS URLs"),
    ],
)
def test_a_malformed_setting_is_an_error_naming_the_variable_not_the_value(setting, problem, monkeypatch):
    with pytest.raises(st.StorageSettingError) as refused:
        st.open_storage(setting)
    message = str(refused.value)
    assert message.startswith(config.STORAGE_ENV + " ") and problem in message, message
    assert KEY not in message and "acct" not in message
    assert isinstance(refused.value, ValueError) and KEY not in repr(refused.value)
    if not setting:
        return  # an empty variable means the default, as every setting's does
    monkeypatch.setenv(config.STORAGE_ENV, setting)
    with pytest.raises(st.StorageSettingError, match=f"^{config.STORAGE_ENV} "):
        st.open_storage()


def test_the_caller_names_where_the_setting_came_from():
    with pytest.raises(
        st.StorageSettingError, match="^Airflow connection 'scoring_storage' is not a usable connection"
    ):
        st.open_storage(f"AccountName=acct;Key={KEY}", source="Airflow connection 'scoring_storage'")


def test_a_parsed_setting_never_shows_its_value():
    assert KEY not in repr(st.parse_setting(f"AccountName=acct;AccountKey={KEY}"))


@pytest.mark.parametrize(
    "setting, url",
    [
        ("https://acct.blob.core.windows.net", "https://acct.blob.core.windows.net"),
        ("https://acct.blob.core.windows.net/", "https://acct.blob.core.windows.net"),
        ("https://acct.dfs.core.windows.net/", "https://acct.blob.core.windows.net"),  # Data Lake endpoint
        ("https://Acct.DFS.core.chinacloudapi.cn", "https://acct.blob.core.chinacloudapi.cn"),
        ("https://127.0.0.1:10000/devstoreaccount1", "https://127.0.0.1:10000/devstoreaccount1"),  # IP style
    ],
)
def test_account_urls_open_blob_storage_with_entra_id(setting, url, monkeypatch):
    from azure.identity import DefaultAzureCredential

    from sensor_scoring.storage import blob as blob_module

    monkeypatch.setattr(blob_module, "_CREDENTIALS", {})
    monkeypatch.setattr(blob_module, "_DEFAULT_CREDENTIAL", [])
    parsed = st.parse_setting(setting)
    assert (parsed.kind, parsed.value) == ("account_url", url)
    storage = st.open_storage(setting)  # nothing is asked of Entra ID until a request is made
    assert isinstance(storage, st.BlobStorage) and isinstance(storage.token_credential, DefaultAzureCredential)
    assert storage.child_setting() == url and storage.describe().startswith("blob account ")
    registered = object.__new__(DefaultAzureCredential)
    st.use_credential(setting, registered)  # keyed by the normalised URL: the dfs form is the blob account
    assert st.open_storage(url).token_credential is registered


@pytest.mark.parametrize(
    "setting, problem",
    [
        ("http://acct.blob.core.windows.net", "must be https"),
        ("https://acct.blob.core.windows.net/?sv=2024-01-01&sig=" + KEY, "carries no query"),
        ("https://acct.blob.core.windows.net/models", "not a container"),
        ("https://user:pw@acct.blob.core.windows.net", "carries no query, fragment or credentials"),
    ],
)
def test_an_unusable_account_url_is_refused_without_showing_it(setting, problem):
    with pytest.raises(st.StorageSettingError) as refused:
        st.open_storage(setting)
    assert problem in str(refused.value) and KEY not in str(refused.value) and "acct" not in str(refused.value)


@pytest.mark.parametrize(
    "name, size, metadata, resource_type, folder",
    [
        ("2026/11/24/03/", 0, {}, "", True),  # Storage Explorer, azcopy
        ("2026/11/24/03", 0, {"hdi_isfolder": "true"}, "", True),  # a Data Lake Gen2 directory
        ("2026/11/24/03", 0, {"Hdi_IsFolder": "True"}, "", True),
        ("2026/11/24/03", 0, {}, "directory", True),
        ("2026/11/24/03/a.json", 0, {}, "", False),  # an empty file is a file (the hour says it was empty)
        ("2026/11/24/03/", 12, {"hdi_isfolder": "true"}, "", False),  # bytes are data, whatever the name
    ],
)
def test_folder_markers_are_told_from_blobs(name, size, metadata, resource_type, folder):
    assert st.is_folder_marker(name, size, metadata, resource_type) is folder


def test_a_user_delegation_sas_beyond_seven_days_is_refused_before_asking_for_a_key(monkeypatch):
    from sensor_scoring.storage import blob as blob_module

    monkeypatch.setattr(blob_module, "_DEFAULT_CREDENTIAL", [])
    storage = st.open_storage("https://acct.blob.core.windows.net")
    with pytest.raises(ValueError, match="at most 7 days; 200 hours asked"):
        st.make_sas_setting(storage, read=["models"], read_write=[], hours=200)


def test_the_shard_outputs_link_of_an_account_url_and_of_a_sas_connection_string_carries_no_secret():
    from sensor_scoring_airflow.operators import outputs_url

    assert outputs_url("https://acct.dfs.core.windows.net", "predictions", "date=2026-01-01/hour=03/") == (
        "https://acct.blob.core.windows.net/predictions?restype=container&comp=list&prefix=date%3D2026-01-01/hour%3D03/"
    )
    sas = "BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=sv=2020-08-04&sig=" + KEY
    assert KEY not in outputs_url(sas, "predictions", "")
