"""The scorer image's Python environment, checked without Docker.

The scorer stage of the Dockerfile installs requirements-scorer.txt with --no-deps. Here: that file is exactly
the lock's lines for the scoring package's dependency closure (great-expectations included: a shard runs the
validation suite), and `python -m sensor_scoring read-windows` and `score-shard` really run,
against Azurite, in an interpreter that sees those packages and nothing else (no site-packages, no Airflow),
with only the SAS-URL storage setting the azure_batch backend gives a Batch task.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from dev import scorer_requirements
from sensor_scoring.backends import azure_batch
from sensor_scoring.models import fitting, registry
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps.plan import plan_shards
from sensor_scoring.windows import land_windows
from tests.conftest import REPO
from tests.support.helpers import START, fleet_windows


def pinned_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines() if line.split("#", 1)[0].strip()]


def test_scorer_requirements_are_the_locks_lines_for_the_packages_closure():
    assert scorer_requirements.main(["--check"]) == 0, "requirements-scorer.txt is stale"
    lock = set(pinned_lines(REPO / "requirements.txt"))
    scorer = pinned_lines(REPO / "requirements-scorer.txt")
    assert scorer and set(scorer) <= lock  # same spelling, same versions: one lock
    names = {canonicalize_name(line.split("==")[0]) for line in scorer}
    assert {"numpy", "pandas", "pyarrow", "scikit-learn", "azure-storage-blob"} <= names  # pyproject's dependencies
    assert {"scipy", "joblib", "azure-core", "cryptography"} <= names  # and what they need
    # every scoring shard runs the validation suite on its windows, a Batch node's too: great-expectations is in
    assert "great-expectations" in names
    assert not names & {"apache-airflow", "apache-airflow-core", "azure-eventhub", "azure-batch"}
    assert len(names) < len(lock) / 4  # great-expectations' closure is 18 of its 47 packages


def test_a_closure_member_missing_from_the_lock_is_refused(tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text(
        "\n".join(
            line for line in (REPO / "requirements.txt").read_text().splitlines() if not line.startswith("scipy==")
        )
        + "\n"
    )
    with pytest.raises(ValueError, match="scipy is needed by the scorer but not pinned"):
        scorer_requirements.scorer_lines(lock)
    lock.write_text("numpy>=2\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        scorer_requirements.lock_lines(lock)


def test_every_scorer_package_has_a_wheel_the_slim_image_can_install():
    """The scorer stage installs with --only-binary (no compiler there). The lock's environment was installed from
    wheels; their tags say a wheel of that exact version exists for CPython 3.11 on glibc Linux x86_64, and that its
    glibc floor is met by python:3.11-slim (Debian 12 ships glibc 2.36, later releases newer)."""
    for line in pinned_lines(REPO / "requirements-scorer.txt"):
        tags = [
            t.split(": ", 1)[1]
            for t in (importlib.metadata.distribution(line.split("==")[0]).read_text("WHEEL") or "").splitlines()
            if t.startswith("Tag: ")
        ]
        assert tags, f"{line}: not installed from a wheel"
        usable = False
        for tag in tags:
            python, abi, platform = tag.split("-")
            if platform == "any" and "py3" in python.split("."):
                usable = True
            match = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64|manylinux(1|2010|2014)_x86_64", platform)
            if match and python == "cp311" and abi in ("cp311", "abi3"):
                glibc = (int(match.group(1)), int(match.group(2))) if match.group(1) else (2, 17)
                usable = usable or glibc <= (2, 36)
        assert usable, f"{line}: wheel tags {tags} do not fit CPython 3.11 on python:3.11-slim"


def package_farm(root: Path) -> Path:
    """A directory holding only the scorer's distributions (symlinked file by file) and the sensor_scoring package."""
    farm = root / "site"
    for line in pinned_lines(REPO / "requirements-scorer.txt"):
        dist = importlib.metadata.distribution(line.split("==")[0])
        base = Path(dist.locate_file("")).resolve()
        for file in dist.files or []:
            source = Path(dist.locate_file(file)).resolve()
            if not source.is_relative_to(base) or not source.is_file():
                continue  # scripts in bin/ and the like
            target = farm / source.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(source)
    (farm / "sensor_scoring").symlink_to(REPO / "src" / "sensor_scoring")  # the one package the scorer image copies
    return farm


@pytest.mark.azurite
def test_score_shard_runs_with_only_the_scorer_packages(blob, containers, azurite, tmp_path):
    windows = fleet_windows(devices=2, tags=2, hours=3)
    land_windows(blob, containers.windows, windows)
    registry.register(blob, containers.models, fitting.train_models(windows), version="v1", params={}, promote=True)
    hour = Scope(blob, containers, "image-run", START + timedelta(hours=2), START + timedelta(hours=3))
    plan = plan_shards(hour, model_version="production", sensors_per_shard=10)
    [read_group], [shard] = plan.reads, plan.shards

    farm = package_farm(tmp_path)
    # -S: no site-packages at all; PYTHONPATH is the farm only. The environment is what the azure_batch backend
    # gives a Batch task: SAS URLs for models (read) and staging (read/write), no account key.
    task_env = azure_batch.batch_task_env(azurite.connection_string, containers.__dict__, sas_hours=1)
    assert "AccountKey" not in json.dumps(task_env)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(farm),
        "PYTHONDONTWRITEBYTECODE": "1",
        **task_env,
        **{key: value for key, value in os.environ.items() if key.startswith("SCORING_CONTAINER_")},
    }
    isolated = [sys.executable, "-S"]
    probe = subprocess.run(isolated + ["-c", "import airflow"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'airflow'" in probe.stderr  # the isolation is real

    def shard_command(command: str, spec_uri: str) -> dict:
        done = subprocess.run(
            isolated + ["-m", "sensor_scoring", command, "--spec", spec_uri],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    # both mapped tasks a Batch node runs: the read task of the hour's files, then the shard (suite, features, scores)
    read = shard_command("read-windows", read_group.spec_uri)
    assert read["landed_by_hour"] == {hour.start.isoformat(): 4 * 60}
    result = shard_command("score-shard", shard.spec_uri)
    assert result["scored"] == 4 * 60 and result["quarantined"] == 0
    assert blob.exists(containers.staging, f"runs/{hour.run_key}/shard-00000/predictions.parquet")
