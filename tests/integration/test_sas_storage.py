"""SAS-only storage on the real Azurite: what a Batch task can and cannot do, and its exact command line run here."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError

from dev.azurite import KEY, connection_string, free_port
from sensor_scoring import backends, settings as config, storage as st
from sensor_scoring.backends import azure_batch as batch
from tests.support.helpers import planned_hour

pytestmark = [pytest.mark.azurite]


@pytest.fixture
def planned_shard(blob, containers):
    """One planned shard of a real hour on Azurite: its spec, input and models are in blob storage."""
    hour, [shard] = planned_hour(blob, containers, "sas-run", devices=1, tags=2, sensors_per_shard=5)
    return hour, shard


def test_sas_setting_reads_models_writes_staging_and_nothing_else(blob, containers, azurite, tmp_path):
    blob.write_bytes(containers.models, "m.txt", b"model")
    blob.write_bytes(containers.staging, "keep.txt", b"x")
    blob.write_bytes(containers.predictions, "p.txt", b"p")
    setting = st.make_sas_setting(
        azurite.connection_string, read=[containers.models], read_write=[containers.staging], hours=1
    )
    assert KEY not in setting and "AccountKey" not in setting
    assert set(json.loads(setting)[st.SAS_SETTING_KEY]) == {containers.models, containers.staging}
    sas = st.open_storage(setting)
    assert isinstance(sas, st.SasStorage) and "sig=" not in sas.describe()

    assert sas.read_bytes(containers.models, "m.txt") == b"model"
    sas.download_file(containers.models, "m.txt", tmp_path / "m.txt")
    assert (tmp_path / "m.txt").read_bytes() == b"model"
    assert [b.name for b in sas.list(containers.models)] == ["m.txt"]
    sas.write_bytes(containers.staging, "runs/x/out.json", b"{}")
    assert blob.read_bytes(containers.staging, "runs/x/out.json") == b"{}"
    with pytest.raises(HttpResponseError) as refused:  # the service itself refuses: the SAS grants read only
        sas.write_bytes(containers.models, "m.txt", b"overwritten")
    assert refused.value.status_code == 403
    assert blob.read_bytes(containers.models, "m.txt") == b"model"
    with pytest.raises(PermissionError, match=f"no SAS for container '{containers.predictions}'"):
        sas.write_bytes(containers.predictions, "p.txt", b"overwritten")
    with pytest.raises(PermissionError):
        sas.read_bytes(containers.windows, "anything")


def test_a_missing_container_lists_empty_as_with_the_account_key(blob, containers, azurite):
    """A container nobody wrote to yet: both blob implementations answer an empty listing, not an error."""
    missing = f"never-written-{containers.staging}"
    sas = st.open_storage(st.make_sas_setting(azurite.connection_string, read=[missing], read_write=[], hours=1))
    assert sas.list(missing) == [] == blob.list(missing)
    assert sas.list(missing, "runs/") == [] and not sas.exists(missing, "runs/x.json")


def test_sas_storage_has_the_retry_budget_of_the_settings(azurite, monkeypatch):
    setting = st.make_sas_setting(azurite.connection_string, read=["models"], read_write=[], hours=1)
    assert st.open_storage(setting).retry_total == st.BlobStorage(azurite.connection_string).retry_total == 6
    monkeypatch.setenv(st.RETRIES_ENV, "3")
    sas = st.open_storage(setting)
    assert isinstance(sas, st.SasStorage) and sas.retry_total == 3
    monkeypatch.setenv(st.RETRIES_ENV, "-1")
    with pytest.raises(ValueError, match=st.RETRIES_ENV):
        st.open_storage(setting)


def test_an_expired_sas_is_refused(blob, containers, azurite):
    blob.write_bytes(containers.models, "m.txt", b"model")
    long_ago = datetime.now(timezone.utc) - timedelta(hours=3)
    setting = st.make_sas_setting(
        azurite.connection_string, read=[containers.models], read_write=[], hours=1, now=long_ago
    )
    with pytest.raises(HttpResponseError) as refused:
        st.open_storage(setting).read_bytes(containers.models, "m.txt")
    assert refused.value.status_code == 403 and refused.value.error_code == "AuthorizationFailure"


def test_a_sas_needs_an_account_key_to_be_minted(azurite):
    endpoint = azurite.connection_string.split("BlobEndpoint=")[1]
    with pytest.raises(ValueError, match="account key"):
        st.make_sas_setting(
            f"BlobEndpoint={endpoint}SharedAccessSignature=sv=2020-08-04&sig=x", read=["a"], read_write=[], hours=1
        )


def run_as_batch_task(options, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a Batch task's command line as the node would: no shell, only the task's environment settings
    (plus a PATH whose ``python`` is this interpreter, as the scorer image puts its venv first)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    env |= {s.name: s.value for s in options.environment_settings}
    return subprocess.run(
        shlex.split(options.command_line), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def test_a_batch_task_gets_the_storage_retry_budget_but_nothing_else(azurite, monkeypatch):
    containers = {"models": "models", "staging": "staging"}
    assert set(batch.batch_task_env(azurite.connection_string, containers, sas_hours=1)) == {config.STORAGE_ENV}
    monkeypatch.setenv(st.RETRIES_ENV, "9")
    monkeypatch.setenv(st.RETRY_BACKOFF_ENV, "0.5")
    monkeypatch.setenv("SCORING_SMTP_PASSWORD", "not-for-batch")  # other settings of the worker stay there
    env = batch.batch_task_env(azurite.connection_string, containers, sas_hours=1)
    assert env[st.RETRIES_ENV] == "9" and env[st.RETRY_BACKOFF_ENV] == "0.5"
    assert set(env) == {config.STORAGE_ENV, st.RETRIES_ENV, st.RETRY_BACKOFF_ENV}


def test_the_exact_batch_command_line_scores_a_shard_with_sas_only(planned_shard, blob, containers, azurite, tmp_path):
    hour, shard = planned_shard
    facts = batch.shard_facts(blob, shard["spec_uri"], "score-shard")
    task_env = batch.batch_task_env(azurite.connection_string, facts.containers, sas_hours=1)
    options = batch.task_options(batch.BatchSettings(), batch.task_id(facts, 1), shard["spec_uri"], task_env)
    assert options.command_line == f"python -m sensor_scoring score-shard --spec {shard['spec_uri']}"
    assert [s.name for s in options.environment_settings] == [config.STORAGE_ENV]
    assert KEY not in json.dumps(options.as_dict()) and "AccountKey" not in json.dumps(options.as_dict())

    done = run_as_batch_task(options, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["scored"] == 120 and result["shard"] == 0
    assert result == backends.read_result(shard["spec_uri"], azurite.connection_string)
    assert blob.exists(containers.staging, f"runs/{hour.run_key}/shard-00000/predictions.parquet")


def test_the_batch_command_line_fails_when_its_sas_does_not_allow_the_write(
    planned_shard, containers, azurite, tmp_path
):
    """Same task, but staging only readable: the shard reads its input and models, then its write is refused."""
    _, shard = planned_shard
    sas = st.make_sas_setting(
        azurite.connection_string, read=[containers.models, containers.staging], read_write=[], hours=1
    )
    options = batch.task_options(batch.BatchSettings(), "t", shard["spec_uri"], {config.STORAGE_ENV: sas})
    done = run_as_batch_task(options, tmp_path)
    assert done.returncode != 0
    assert "AuthorizationPermissionMismatch" in done.stderr or "403" in done.stderr, done.stderr[-2000:]


def test_a_batch_task_rides_an_outage_with_the_forwarded_budget_and_names_it(
    planned_shard, containers, monkeypatch, tmp_path
):
    """The worker's budget reaches the node (batch_task_env), and the node's SAS storage spends exactly that
    budget: when the account stays away, the shard fails saying how many retries it made."""
    _, shard = planned_shard
    monkeypatch.setenv(st.RETRIES_ENV, "2")
    monkeypatch.setenv(st.RETRY_BACKOFF_ENV, "0.1")
    gone = connection_string("127.0.0.1", free_port())  # the same account, unreachable: nothing listens there
    task_env = batch.batch_task_env(gone, {"models": containers.models, "staging": containers.staging}, sas_hours=1)
    assert task_env[st.RETRIES_ENV] == "2" and task_env[st.RETRY_BACKOFF_ENV] == "0.1"
    done = run_as_batch_task(batch.task_options(batch.BatchSettings(), "t", shard["spec_uri"], task_env), tmp_path)
    assert done.returncode != 0
    assert "score_shard: SAS access to http://127.0.0.1:" in done.stderr, done.stderr[-2000:]
    assert "is unreachable after 2 retries with exponential backoff" in done.stderr, done.stderr[-2000:]
