"""``sensor_scoring.settings``: the defaults, what a bad value says (its variable, never a secret), the nested
container and Batch settings, and the README's settings table held against ``settings.documented()``."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from sensor_scoring import settings
from sensor_scoring.settings import BatchSettings, Containers, Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
#: Variables the development tooling reads (dev/, the Makefile), documented in the README's development note.
DEV_ONLY = {"SCORING_PG_BINDIR", "SCORING_CHROMIUM"}
NAME = re.compile(r"\bSCORING_[A-Z0-9_]*[A-Z0-9]\b")


def env_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """Every field of ``cls`` and of its nested settings that names an environment variable."""
    hints = get_type_hints(cls)
    found: list[dataclasses.Field[Any]] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found += env_fields(hints[f.name])
        elif f.metadata.get("env"):
            found.append(f)
    return found


def table_rows(markdown: str) -> dict[str, tuple[str, str]]:
    """``| `SCORING_X` | default | meaning |`` rows of a Markdown text: variable -> (default, last column)."""
    rows: dict[str, tuple[str, str]] = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `SCORING_") else []
        if cells and re.fullmatch(r"`SCORING_[A-Z0-9_]+`", cells[0]):
            assert cells[0][1:-1] not in rows, f"{cells[0]} is listed twice"
            rows[cells[0][1:-1]] = (cells[1], cells[-1])
    return rows


def section(markdown: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same level."""
    level = heading.split(" ")[0]
    start = markdown.index(f"\n{heading}\n")
    end = markdown.find(f"\n{level} ", start + len(heading) + 2)
    return markdown[start : end if end != -1 else None]


# --- defaults and parsing ---


def test_an_empty_environment_gives_the_defaults():
    got = Settings.from_env({})
    assert got == Settings()
    assert got.storage == "UseDevelopmentStorage=true" and got.storage_conn_id == "scoring_storage"
    assert got.start_date == datetime(2000, 1, 1, tzinfo=timezone.utc)
    assert (got.task_retries, got.retry_delay_s, got.deadline_minutes) == (2, 60, 90)
    assert got.anomaly_alert_threshold is None and got.backend == "local"
    assert (got.storage_retries, got.storage_retry_backoff_s) == (6, 1.0)
    assert got.containers == Containers() and got.batch == BatchSettings()
    assert Path(got.batch.formula_path).is_file()  # the packaged formula, wherever the package is installed


def test_values_are_read_as_their_types_and_blank_ones_keep_the_default():
    got = Settings.from_env(
        {
            "SCORING_TASK_RETRIES": " 5 ",
            "SCORING_STORAGE_RETRY_BACKOFF_S": "0.25",
            "SCORING_ANOMALY_ALERT_THRESHOLD": "0",
            "SCORING_START_DATE": "2018-08-29T01:00+02:00",
            "SCORING_BACKEND": "azure_batch",
            "SCORING_DEADLINE_MINUTES": "",
            "SCORING_RETRY_DELAY_SECONDS": "   ",
            "SCORING_STORAGE": "/data/scoring",
        }
    )
    assert got.task_retries == 5 and got.storage_retry_backoff_s == 0.25
    assert got.anomaly_alert_threshold == 0  # set to 0: every anomaly alerts; unset: none
    assert got.start_date == datetime(2018, 8, 28, 23, tzinfo=timezone.utc) and got.backend == "azure_batch"
    assert got.deadline_minutes == 90 and got.retry_delay_s == 60 and got.storage == "/data/scoring"


def test_current_reads_the_environment_each_time(monkeypatch):
    monkeypatch.setenv("SCORING_TASK_RETRIES", "7")
    assert settings.current().task_retries == 7
    monkeypatch.setenv("SCORING_TASK_RETRIES", "8")
    assert settings.current().task_retries == 8


def test_nested_containers_and_batch_come_from_the_same_environment():
    env = {
        "SCORING_CONTAINER_WINDOWS": "landed",
        "SCORING_CONTAINER_STAGING": "scratch",
        "SCORING_BATCH_MAX_NODES": "7",
        "SCORING_BATCH_SAS_HOURS": "0.5",
        "SCORING_SCORER_IMAGE": "acr.io/s:1",
    }
    got = Settings.from_env(env)
    assert got.containers == Containers(windows="landed", staging="scratch") == Containers.from_env(env)
    assert (
        got.batch == BatchSettings(max_nodes=7, sas_hours=0.5, scorer_image="acr.io/s:1") == BatchSettings.from_env(env)
    )
    assert got.batch.container_run_options == "--rm"  # a constant of the code: no variable sets it
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.containers.windows = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "raw", "message"),
    [
        ("SCORING_TASK_RETRIES", "two", "environment variable SCORING_TASK_RETRIES='two' is not an integer"),
        ("SCORING_TASK_RETRIES", "-1", "environment variable SCORING_TASK_RETRIES='-1' must be at least 0"),
        ("SCORING_RETRY_DELAY_SECONDS", "0", "environment variable SCORING_RETRY_DELAY_SECONDS='0' must be at least 1"),
        ("SCORING_ANOMALY_ALERT_THRESHOLD", "many", "SCORING_ANOMALY_ALERT_THRESHOLD='many' is not an integer"),
        (
            "SCORING_STORAGE_RETRY_BACKOFF_S",
            "1s",
            "environment variable SCORING_STORAGE_RETRY_BACKOFF_S='1s' is not a number",
        ),
        ("SCORING_BACKEND", "cloud", "environment variable SCORING_BACKEND='cloud' is not one of local, azure_batch"),
        ("SCORING_START_DATE", "soon", "environment variable SCORING_START_DATE='soon' is not an ISO date or time"),
        (
            "SCORING_START_DATE",
            "2018-08-28T23:30Z",
            "SCORING_START_DATE='2018-08-28T23:30Z' is not on a whole UTC hour",
        ),
        ("SCORING_CONTAINER_MODELS", "", None),  # blank: the default, not an error
        ("SCORING_BATCH_MAX_NODES", "4.5", "environment variable SCORING_BATCH_MAX_NODES='4.5' is not an integer"),
        ("SCORING_BATCH_SAS_HOURS", "0", "environment variable SCORING_BATCH_SAS_HOURS='0' must be at least 0.1"),
        ("SCORING_BATCH_TASK_SLOTS_PER_NODE", "0", "SCORING_BATCH_TASK_SLOTS_PER_NODE='0' must be at least 1"),
    ],
)
def test_a_bad_value_raises_naming_its_variable(env, raw, message):
    if message is None:
        assert Settings.from_env({env: raw}) == Settings()
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env({env: raw})


def test_secret_values_are_never_repeated():
    key = "AccountKey=c2VjcmV0LWtleQ=="
    got = Settings.from_env(
        {
            "SCORING_STORAGE": f"DefaultEndpointsProtocol=https;AccountName=a;{key}",
            "SCORING_EVENTHUB_CONNECTION": f"Endpoint=sb://n/;SharedAccessKey={key}",
        }
    )
    assert key in got.storage and key in got.eventhub_connection
    assert key not in repr(got) and key not in str(got)  # a logged Settings shows neither

    @dataclass(frozen=True)
    class WithSecret:
        token_count: int = settings.setting(
            "SCORING_TEST_TOKEN_COUNT", 1, "a number that is a secret", secret=True, minimum=1
        )

    for raw, why in (("s3cr3t-value", "is not an integer"), ("-31337", "must be at least 1")):
        with pytest.raises(ValueError) as caught:
            settings.load(WithSecret, {"SCORING_TEST_TOKEN_COUNT": raw})
        assert str(caught.value) == f"environment variable SCORING_TEST_TOKEN_COUNT=<hidden> {why}"
    assert settings.load(WithSecret, {"SCORING_TEST_TOKEN_COUNT": "3"}).token_count == 3


def test_the_functions_of_one_setting_are_the_settings_values(monkeypatch):
    monkeypatch.setenv("SCORING_STORAGE", "/tmp/x")
    monkeypatch.setenv("SCORING_STORAGE_CONN_ID", "other")
    monkeypatch.setenv("SCORING_START_DATE", "2026-01-01")
    assert settings.storage_setting() == "/tmp/x" and settings.storage_conn_id() == "other"
    assert settings.start_date() == datetime(2026, 1, 1, tzinfo=timezone.utc)


# --- documentation ---


def test_documented_covers_every_field_with_a_variable_once():
    rows = settings.documented()
    assert [r.env for r in rows] == [f.metadata["env"] for f in env_fields(Settings)]
    assert len({r.env for r in rows}) == len(rows)
    assert all(r.env.startswith("SCORING_") and r.default and r.meaning for r in rows)
    assert [r.env for r in settings.documented(BatchSettings)] == [f.metadata["env"] for f in env_fields(BatchSettings)]
    # every *_ENV constant of the module is one of them: the names other modules import stay in step
    constants = {value for name, value in vars(settings).items() if name.endswith("_ENV")}
    assert constants and constants <= {r.env for r in rows}


def test_documented_defaults_are_the_values_in_backticks_unless_described():
    rows = {r.env: r.default for r in settings.documented()}
    assert rows["SCORING_TASK_RETRIES"] == "`2`" and rows["SCORING_BATCH_SAS_HOURS"] == "`6`"
    assert rows["SCORING_STORAGE_RETRY_BACKOFF_S"] == "`1`" and rows["SCORING_CONTAINER_WINDOWS"] == "`windows`"
    assert rows["SCORING_START_DATE"] == f"`{settings.DEFAULT_START_DATE}`"
    assert rows["SCORING_ANOMALY_ALERT_THRESHOLD"] == "unset"


def test_the_readme_table_lists_every_setting_with_its_default_and_meaning():
    configuration = section(README, "## Configuration")
    shown = table_rows(configuration)
    documented = {r.env: r for r in settings.documented()}
    regenerate = "regenerate it with settings.markdown_table()"
    assert set(shown) == set(documented), (
        f"README lacks {sorted(set(documented) - set(shown))}, has unknown "
        f"{sorted(set(shown) - set(documented))}: {regenerate}"
    )
    for env, (default, meaning) in shown.items():
        assert default == documented[env].default, f"{env}: README says {default}, the code {documented[env].default}"
        assert meaning == documented[env].meaning, f"{env}: the meaning differs from the code's: {regenerate}"
    assert settings.markdown_table() in configuration


def test_every_variable_the_code_names_is_a_setting_or_a_dev_only_one_in_the_readme():
    files = [
        *(REPO / "src").rglob("*.py"),
        *(REPO / "dags").rglob("*.py"),
        *(REPO / "dev").rglob("*.py"),
        REPO / "Makefile",
        REPO / "Dockerfile",
        *(REPO / "infra").rglob("*.py"),
    ]
    named = {name for path in files for name in NAME.findall(path.read_text())}
    documented = {r.env for r in settings.documented()}
    assert named - documented == DEV_ONLY, named - documented
    note = section(README, "## Configuration").split("Development only", 1)[1]
    assert DEV_ONLY <= set(NAME.findall(note)) and not DEV_ONLY & set(table_rows(README))


# --- importing the package ---


def test_importing_every_module_leaves_the_environment_alone_and_airflow_unloaded():
    """No module of the Airflow-free package changes os.environ or loads Airflow at import; validation keeps
    great-expectations' usage statistics off through its context's configuration instead."""
    probe = """
import importlib, os, pkgutil, sys
before = dict(os.environ)
import sensor_scoring
names = sorted(m.name for m in pkgutil.walk_packages(sensor_scoring.__path__, "sensor_scoring."))
for name in names:
    importlib.import_module(name)
from sensor_scoring.validation import expectations
context = expectations._context()
airflow = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] == "airflow"})
print(len(names), dict(os.environ) == before, airflow,
      context.variables.analytics_enabled, "GX_ANALYTICS_ENABLED" in os.environ)
"""
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "GX_ANALYTICS_ENABLED"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    count, unchanged, airflow, analytics, gx_env = done.stdout.split(maxsplit=4)
    assert int(count) > 15
    assert (unchanged, airflow, analytics, gx_env.strip()) == ("True", "[]", "False", "False"), done.stdout
