"""Shared fixtures: a real Azurite server, a migrated Airflow metadata DB, fresh containers per test.

Airflow reads its configuration at import, so its environment is set here, before any test imports it:
a temporary AIRFLOW_HOME with SQLite, no examples, and the project's dags/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

# Fixtures shared across tiers, by name: the `airflow standalone` stack and its SMTP/webhook receivers (e2e and
# browser tests), the alert receivers of the DAG and live-alert tests, the landed hour of the Azure Batch tests,
# the managed-identity endpoint of the Entra ID tests and the fake Azure Batch account they run against.
pytest_plugins = [
    "tests.support.standalone_stack",
    "tests.support.alerting",
    "tests.support.batch_hour",
    "tests.support.managed_identity",
    "tests.support.fake_batch",
]

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="scoring-tests-airflow-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.pop("SCORING_STORAGE", None)
os.environ.pop("SCORING_STORAGE_CONN_ID", None)

from dev.azurite import Azurite  # noqa: E402
from sensor_scoring import settings as config  # noqa: E402
from sensor_scoring.storage import BlobStorage  # noqa: E402


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """One real Azurite blob server for the session, stopped by its process group at the end (or on failure)."""
    server = Azurite(tmp_path_factory.mktemp("azurite")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def oauth_azurite(tmp_path_factory: pytest.TempPathFactory):
    """Azurite in its OAuth mode (HTTPS, ``--oauth basic``) with its debug log, for the session: how the tests
    prove a run used bearer tokens and never the key (:meth:`Azurite.requests`). Stopped by its process group."""
    server = Azurite(tmp_path_factory.mktemp("azurite-oauth"), oauth=True, debug_log=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def containers(monkeypatch: pytest.MonkeyPatch) -> config.Containers:
    """Container names unique to the test, so tests sharing one Azurite never see each other's blobs."""
    suffix = uuid.uuid4().hex[:8]
    for name in config.Containers().__dict__:
        monkeypatch.setenv(f"SCORING_CONTAINER_{name.upper()}", f"{name}-{suffix}")
    return config.Containers.from_env()


@pytest.fixture
def blob(azurite: Azurite, containers: config.Containers, monkeypatch: pytest.MonkeyPatch) -> BlobStorage:
    """Blob storage on the session's Azurite, also exported as SCORING_STORAGE for code under test."""
    monkeypatch.setenv(config.STORAGE_ENV, azurite.connection_string)
    return BlobStorage(azurite.connection_string)


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated SQLite metadata DB in the session's AIRFLOW_HOME, for the in-process tier (``dag.test()``).

    SQLite is enough there: one process, no scheduler, nothing writing concurrently. Every test with a scheduler
    runs on a dev stack's PostgreSQL instead (tests/standalone_stack.py, dev.devstack).
    """
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return _AIRFLOW_HOME


@pytest.fixture
def sensor_dag(airflow_db: str):
    """The sensor_scoring DAG, imported afresh from its file for each test.

    Fresh, because Airflow 3.3 merges a run's conf into the very Param objects of the DAG when tasks run
    in-process (``dag.test``): a conf given to one test's run would become the next test's default.
    """
    from dev.demo import load_dag

    return load_dag(REPO / "dags" / "sensor_scoring.py")
