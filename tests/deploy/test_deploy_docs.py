"""docs/deploy-azure.md against the code: the Azure side cannot run here, so what it configures must at least
agree with what the code reads and writes (folder layout, query names, settings, payload, pool definition)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from sensor_scoring import settings as config
from sensor_scoring.windows import folder_for
from tests.conftest import REPO

DOC = (REPO / "docs" / "deploy-azure.md").read_text()
QUERY = (REPO / "infra" / "stream_analytics" / "windows.asaql").read_text()
SAMPLE_VARS = {"EH_NAMESPACE": "sensor-scoring-1", "EVENTHUB": "readings", "STORAGE": "sensorscoring1"}


def heredoc(name: str) -> dict:
    """The JSON a `cat > name <<EOF` block of the doc writes, with the shell variables filled in."""
    match = re.search(rf"cat > {re.escape(name)} <<EOF\n(.*?)\nEOF\n", DOC, re.S)
    assert match, f"no heredoc for {name}"
    return json.loads(re.sub(r"\$([A-Z_]+)", lambda m: SAMPLE_VARS[m.group(1)], match.group(1)))


def test_stream_analytics_output_lands_in_the_folders_the_dag_reads():
    output = heredoc("asa-output.json")["properties"]
    assert output["container"] == config.Containers().windows
    assert output["pathPattern"] == "{date}/{time}"
    # Stream Analytics' .NET-style formats, translated, give exactly sensor_scoring.windows.folder_for's layout
    dotnet = {"yyyy": "%Y", "MM": "%m", "dd": "%d", "HH": "%H"}
    date_format = re.sub("|".join(dotnet), lambda m: dotnet[m.group(0)], output["dateFormat"])
    time_format = re.sub("|".join(dotnet), lambda m: dotnet[m.group(0)], output["timeFormat"])
    moment = datetime(2026, 3, 7, 5, 42, tzinfo=timezone.utc)
    assert moment.strftime(f"{date_format}/{time_format}") == folder_for(moment) == "2026/03/07/05"
    assert heredoc("asa-serialization.json") == {
        "type": "Json",
        "properties": {"encoding": "UTF8", "format": "LineSeparated"},
    }


def test_stream_analytics_input_and_output_names_are_the_querys():
    [source] = re.findall(r"FROM\s+\[(\w+)\]", QUERY)
    [sink] = re.findall(r"INTO\s+\[(\w+)\]", QUERY)
    assert re.search(rf"az stream-analytics input create .*--name {source}\b", DOC, re.S)
    assert re.search(rf"az stream-analytics output create .*--name {sink}\b", DOC, re.S)
    assert "TIMESTAMP BY ts" in QUERY
    source_props = heredoc("asa-input.json")
    assert source_props["serialization"]["type"] == "Json"
    assert source_props["datasource"]["properties"]["eventHubName"] == SAMPLE_VARS["EVENTHUB"]


def test_the_documented_event_is_what_the_simulator_sends():
    import pandas as pd

    from sensor_scoring.tools.eventhub import reading_bodies

    [sample] = re.findall(r'`(\{"ts": [^`]+\})`', DOC)
    documented = json.loads(sample)
    sent = json.loads(
        next(
            reading_bodies(
                pd.DataFrame(
                    {
                        "ts": [pd.Timestamp(documented["ts"])],
                        "device_id": [documented["device_id"]],
                        "tag": [documented["tag"]],
                        "value": [documented["value"]],
                    }
                )
            )
        )
    )
    assert sent == documented


def doc_rows(text: str) -> dict[str, str]:
    """``| `SCORING_X` | default | ...`` rows of a settings table: variable -> default as shown."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if re.fullmatch(r"`SCORING_[A-Z0-9_]+`", cells[0]):
            rows[cells[0][1:-1]] = cells[1]
    return rows


@pytest.mark.parametrize(
    "doc",
    ["docs/deploy-azure.md", "docs/azure-batch.md", "docs/operating.md", "docs/faults.md", "docs/architecture.md"],
)
def test_every_setting_the_docs_name_is_one_the_code_reads(doc):
    """Names in prose, commands and tables alike: each is a variable of sensor_scoring.settings."""
    text = (REPO / doc).read_text()
    named = set(re.findall(r"\bSCORING_[A-Z0-9_]*[A-Z0-9]\b", text)) - {"SCORING_CONTAINER"}
    documented = {row.env for row in config.documented()}
    assert named <= documented, named - documented


@pytest.mark.parametrize("doc", ["docs/azure-batch.md", "docs/operating.md"])
def test_settings_tables_show_the_codes_defaults(doc):
    rows = doc_rows((REPO / doc).read_text())
    defaults = {row.env: row.default for row in config.documented()}
    assert rows
    for env, default in rows.items():
        assert default == defaults[env], f"{doc}: {env} default {default}, the code's {defaults[env]}"


def test_the_batch_table_lists_every_batch_setting():
    rows = doc_rows((REPO / "docs" / "azure-batch.md").read_text().split("\n## Settings\n", 1)[1])
    assert set(rows) == {row.env for row in config.documented(config.BatchSettings)} | {config.BACKEND_ENV}


def test_the_guides_containers_are_the_codes():
    containers = re.search(r"for container in ([a-z ]+); do", DOC).group(1).split()
    assert containers == list(config.Containers().__dict__.values())


def pool_json(env: dict[str, str], *args: str) -> str:
    """What ``infra/batch/pool_json.py`` prints with ``args``, run as the guide runs it."""
    done = subprocess.run(
        [sys.executable, str(REPO / "infra" / "batch" / "pool_json.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pool_json_is_the_backends_pool_with_the_registry_added():
    from sensor_scoring.backends.azure_batch import BatchSettings, autoscale_formula

    env = dict(
        os.environ,
        ACR_PASSWORD="not-a-real-password",
        SCORING_SCORER_IMAGE="myacr.azurecr.io/scorer:0.1.0",
        SCORING_BATCH_MAX_NODES="7",
        PYTHONPATH=str(REPO),
    )
    args = ["--registry-server", "myacr.azurecr.io", "--registry-username", "myacr"]
    pool = json.loads(pool_json(env, *args))
    containers = pool["virtualMachineConfiguration"]["containerConfiguration"]
    assert containers["containerImageNames"] == ["myacr.azurecr.io/scorer:0.1.0"]
    assert containers["containerRegistries"] == [
        {"registryServer": "myacr.azurecr.io", "username": "myacr", "password": "not-a-real-password"}
    ]
    assert pool["enableAutoScale"] is True and "maxDedicated = 7;" in pool["autoScaleFormula"]
    assert pool["autoScaleFormula"] == autoscale_formula(BatchSettings(max_nodes=7))
    assert "not-a-real-password" not in " ".join(args)  # the password never travels on the command line
    missing = subprocess.run(
        [sys.executable, str(REPO / "infra" / "batch" / "pool_json.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={k: v for k, v in env.items() if k != "ACR_PASSWORD"},
    )
    assert missing.returncode != 0 and "ACR_PASSWORD" in missing.stderr


@pytest.mark.parametrize("link", ["docs/deploy-azure.md"])
def test_readme_links_the_deploy_guide(link):
    readme = (REPO / "README.md").read_text()
    assert "## Deploy to Azure" in readme and f"]({link})" in readme


# --- key-free: the guide's commands set, read and pass no account key ---------------------------------------


def bash_blocks(text: str = DOC) -> str:
    """The guide's shell commands: every ```bash block, continuation lines joined."""
    return "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S)).replace("\\\n", " ")


def section_of(title: str) -> str:
    return DOC.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_guides_commands_set_no_account_key():
    commands = bash_blocks()
    for forbidden in (
        "AccountKey",  # a connection string with the storage key
        "show-connection-string",
        "az storage account keys",
        "--account-key",
        "--connection-string",
        "az batch account keys",
        "--shared-key-auth",
        "BATCH_ACCOUNT_KEY",
        "ACR_PASSWORD",
        "--registry-username",
        "--admin-enabled true",
        "SharedAccessSignature",
        "generate-sas",
    ):
        assert forbidden not in commands, f"docs/deploy-azure.md runs something with {forbidden!r}"
    # the storage account refuses keys, and the Batch account accepts Entra ID only
    [create] = [line for line in commands.splitlines() if line.startswith("az storage account create")]
    assert "--allow-shared-key-access false" in create
    assert "allowedAuthenticationModes='[\"AAD\"]'" in commands
    assert all("--auth-mode login" in line for line in commands.splitlines() if "az storage container" in line)
    # the one key still made is the simulator's Event Hubs send policy, and the guide lists it with why
    keys = [line for line in commands.splitlines() if "keys list" in line]
    assert keys and all("eventhubs eventhub authorization-rule keys list" in line for line in keys)
    assert "SCORING_EVENTHUB_CONNECTION" in section_of("What still needs a key")


def documented_exports() -> dict[str, str]:
    """``export NAME="..."`` lines of the guide, shell quoting undone and variables given sample values."""
    sample = {
        **SAMPLE_VARS,
        "AIRFLOW_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "TENANT_ID": "72f988bf-0000-0000-0000-2d7cd011db47",
        "BATCH_URL": "https://sensorscoring1.westeurope.batch.azure.com",
        "KEYVAULT": "sensor-scoring-1",
        "ACR": "sensorscoring1",
    }
    found = {}
    for name, value in re.findall(r'^export ([A-Z_]+)="(.*)"$', bash_blocks(), re.M):
        found[name] = re.sub(r"\$([A-Z_]+)", lambda m: sample[m.group(1)], value.replace('\\"', '"'))
    return found


def test_the_guides_connections_hold_no_secret_and_the_providers_hooks_take_entra_id(monkeypatch):
    """The documented connections, read by the installed provider's hooks: both end up with azure-identity's
    DefaultAzureCredential (nothing is sent: building a client makes no request)."""
    from airflow.providers.microsoft.azure.hooks.batch import AzureBatchHook
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
    from azure.identity import DefaultAzureCredential

    exports = documented_exports()
    storage, batch_conn = (json.loads(exports[f"AIRFLOW_CONN_{n}"]) for n in ("SCORING_STORAGE", "AZURE_BATCH_DEFAULT"))
    for conn in (storage, batch_conn):
        assert "password" not in conn and not any("key" in k or "secret" in k for k in conn.get("extra", {}))
    assert storage["conn_type"] == "wasb" and batch_conn == {
        "conn_type": "azure_batch",
        "extra": {"account_url": "https://sensorscoring1.westeurope.batch.azure.com"},
    }
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_SCORING_STORAGE", exports["AIRFLOW_CONN_SCORING_STORAGE"])
    monkeypatch.setenv("AIRFLOW_CONN_AZURE_BATCH_DEFAULT", exports["AIRFLOW_CONN_AZURE_BATCH_DEFAULT"])
    blob_client = WasbHook(wasb_conn_id="scoring_storage").get_conn()
    assert blob_client.url.startswith("https://sensorscoring1.blob.core.windows.net")
    assert isinstance(blob_client.credential, DefaultAzureCredential)
    batch_client = AzureBatchHook(azure_batch_conn_id="azure_batch_default").get_conn()
    assert isinstance(batch_client._config.credential, DefaultAzureCredential)


def test_the_guides_key_vault_backend_is_the_providers_and_finds_the_smtp_secret():
    from airflow.providers.microsoft.azure.secrets.key_vault import AzureKeyVaultBackend

    from sensor_scoring_airflow.alerts import EMAIL_CONN_ID

    exports = documented_exports()
    module, _, cls = exports["AIRFLOW__SECRETS__BACKEND"].rpartition(".")
    assert f"{module}.{cls}" == f"{AzureKeyVaultBackend.__module__}.{AzureKeyVaultBackend.__name__}"
    kwargs = json.loads(exports["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    backend = AzureKeyVaultBackend(**kwargs)  # no request is made until a secret is asked for
    assert backend.vault_url == "https://sensor-scoring-1.vault.azure.net/"
    secret = AzureKeyVaultBackend.build_path(kwargs["connections_prefix"], EMAIL_CONN_ID)
    assert f"--name {secret} " in bash_blocks()


def test_pool_json_with_an_identity_is_a_resource_manager_pool_without_secrets():
    from sensor_scoring.backends.azure_batch import BatchSettings, autoscale_formula

    identity = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-pool"
    env = dict(os.environ, SCORING_SCORER_IMAGE="myacr.azurecr.io/scorer:0.1.0", PYTHONPATH=str(REPO))
    env.pop("ACR_PASSWORD", None)
    printed = pool_json(env, "--identity", identity, "--registry-server", "myacr.azurecr.io")
    pool = json.loads(printed)
    assert pool["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {identity: {}}}
    vm = pool["properties"]["deploymentConfiguration"]["virtualMachineConfiguration"]
    assert vm["containerConfiguration"]["containerImageNames"] == ["myacr.azurecr.io/scorer:0.1.0"]
    assert vm["containerConfiguration"]["containerRegistries"] == [
        {"registryServer": "myacr.azurecr.io", "identityReference": {"resourceId": identity}}
    ]
    assert pool["properties"]["scaleSettings"]["autoScale"]["formula"] == autoscale_formula(BatchSettings())
    assert "password" not in printed.lower()
    # the guide creates the pool from exactly this, through Resource Manager
    assert "infra/batch/pool_json.py --identity $POOL_IDENTITY_ID --registry-server" in bash_blocks()
    assert "az rest --method put --body @pool-arm.json" in bash_blocks()
