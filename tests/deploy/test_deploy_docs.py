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
    done = subprocess.run(
        [sys.executable, str(REPO / "infra" / "batch" / "pool_json.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    pool = json.loads(done.stdout)
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
