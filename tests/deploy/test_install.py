"""A new user's deployment, run for real: the wheel and the lock in a fresh virtualenv, then Airflow scores an hour.

What README's "run the DAG in your own Airflow" says (``pip install -r requirements.txt && pip install --no-deps
.``), with nothing of the repository borrowed. The project's wheel is built (``pip wheel --no-deps``, offline
without build isolation when this environment's setuptools can build it) and installed with pip into a virtualenv
made in a temporary folder. The lock is not downloaded again: ``pip install -r requirements.txt`` took 3 to 10
minutes here (2 busy cores, no pip cache), so the new venv is given the lock as ``make install`` installed it into
the .venv running the tests. For each distribution pinned in requirements.txt, and only those, found there at
exactly its pinned version (else the test fails), its top-level files are linked into a folder that a ``.pth`` of
the new venv adds as a site directory, and its console scripts are written into the venv's bin/. Left out: the
project's editable install (its ``.pth`` naming src/, its dist-info) and every dev tool, so nothing of this
checkout is importable. Set ``SCORING_DEPLOY_FULL_INSTALL=1`` to install the lock from the package index instead.

Every command then runs with the venv's own executables, a working directory outside the repository, an
environment built from scratch (no PYTHONPATH, no VIRTUAL_ENV, no SCORING_* or AIRFLOW_* of the test session, no
PATH entry inside the repository), a fresh AIRFLOW_HOME on SQLite, a DAGs folder holding only a copy of ``dags/``
and an empty plugins folder: the Airflow side must come from the entry points of the installed wheel alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from sensor_scoring.storage import LocalStorage
from tests.conftest import REPO
from tests.support.partitions import read_partition
from tests.support.training import GATE_TAKES_ANY

pytestmark = pytest.mark.deploy
H = timedelta(hours=1)
S = timedelta(seconds=1)
START = datetime(2026, 11, 24, tzinfo=timezone.utc)
DEVICES, TAGS = 2, 2
#: Environment variables a user's shell plausibly has, passed through; pip's settings reach the package index.
PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


@dataclass(frozen=True)
class Newcomer:
    """The fresh installation: its virtualenv, a working folder outside the repository, and its settings."""

    root: Path
    venv: Path
    wheel: Path
    env: dict[str, str]

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def storage(self) -> Path:
        return Path(self.env["SCORING_STORAGE"])

    def run(self, program: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``<venv>/bin/<program> <args>`` from the working folder, with the installation's environment only."""
        return subprocess.run(
            [str(self.bin / program), *args],
            cwd=self.root / "work",
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, program: str, *args: str, timeout: float = 600) -> str:
        done = self.run(program, *args, timeout=timeout)
        assert done.returncode == 0, (
            f"{program} {' '.join(args)} exited {done.returncode}:\n" + (done.stdout + done.stderr)[-4000:]
        )
        return done.stdout

    def json(self, program: str, *args: str) -> Any:
        """The JSON a command prints as the last line of its standard output (logs go to standard error)."""
        return json.loads(self.ok(program, *args).strip().splitlines()[-1])


def outside_repo(path_list: str) -> str:
    """A PATH without entries inside the repository (its .venv/bin above all)."""
    return os.pathsep.join(p for p in path_list.split(os.pathsep) if p and not Path(p).resolve().is_relative_to(REPO))


def build_wheel(root: Path) -> Path:
    """The project's wheel, built from a copy of what the distribution is made of (no build files in the checkout)."""
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    offline = int(metadata.version("setuptools").split(".")[0]) >= 77  # pyproject.toml's build requirement
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(root / "dist"),
            *(["--no-build-isolation"] if offline else []),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [wheel] = (root / "dist").glob("sensor_scoring-*.whl")
    return wheel


def lock_pins() -> dict[str, str]:
    """Canonical name -> pinned version of every line of requirements.txt."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if found:
            pins[canonicalize_name(found.group(1))] = found.group(2)
    return pins


def link_the_lock(venv: Path, lock_site: Path) -> None:
    """Give ``venv`` the lock's distributions as installed in the running environment, and nothing else of it."""
    here = Path(sysconfig.get_paths()["purelib"])
    pins = lock_pins()
    found = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions(path=[str(here)])}
    wrong = {
        name: (pin, found[name].version if name in found else None)
        for name, pin in pins.items()
        if name not in found or found[name].version != pin
    }
    assert not wrong, f"the running environment is not the lock (make install): {wrong}"
    lock_site.mkdir()
    scripts = venv / "bin"
    for name in pins:
        dist = found[name]
        for top in sorted({Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}):
            if not (lock_site / top).exists() and (here / top).exists():
                (lock_site / top).symlink_to(here / top)
        for entry in dist.entry_points.select(group="console_scripts"):
            module, _, attr = entry.value.partition(":")
            script = scripts / entry.name
            script.write_text(
                f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {attr.split('.')[0]}\n"
                f"sys.exit({attr}())\n"
            )
            script.chmod(0o755)
    leaks = [p.name for p in lock_site.iterdir() if "sensor_scoring" in p.name or p.name.startswith("__editable__")]
    assert not leaks, leaks
    [site] = (venv / "lib").glob("python3*/site-packages")
    (site / "lock.pth").write_text(f"import site; site.addsitedir({str(lock_site)!r})\n")


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Newcomer:
    root = tmp_path_factory.mktemp("newcomer")
    assert not root.resolve().is_relative_to(REPO)
    wheel = build_wheel(root)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    for folder in ("work", "dags", "plugins", "storage", "airflow-home"):
        (root / folder).mkdir()
    shutil.copy2(REPO / "dags" / "sensor_scoring.py", root / "dags" / "sensor_scoring.py")
    env = {key: value for key, value in os.environ.items() if key in PASSED or key.startswith("PIP_")}
    env.update(
        PATH=os.pathsep.join([str(venv / "bin"), outside_repo(os.environ.get("PATH", ""))]),
        AIRFLOW_HOME=str(root / "airflow-home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(root / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(root / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        SCORING_STORAGE=str(root / "storage"),
    )
    installation = Newcomer(root, venv, wheel, env)
    if os.environ.get("SCORING_DEPLOY_FULL_INSTALL") == "1":
        installation.ok("python", "-m", "pip", "install", "--quiet", "-r", str(REPO / "requirements.txt"), timeout=1800)
    else:
        link_the_lock(venv, root / "lock-site")
    installation.ok("python", "-m", "pip", "install", "--quiet", "--no-deps", str(wheel))
    installation.ok("python", "-m", "pip", "check")  # the lock satisfies what the wheel and the lock require
    installation.ok("airflow", "db", "migrate")
    return installation


def test_the_wheel_holds_the_two_packages_and_their_data(newcomer: Newcomer) -> None:
    names = zipfile.ZipFile(newcomer.wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.startswith("sensor_scoring-")} == {
        "sensor_scoring",
        "sensor_scoring_airflow",
    }  # neither dev/ nor tests/ nor dags/
    assert "sensor_scoring/validation/physical_bounds.json" in names
    assert "sensor_scoring/backends/autoscale.formula" in names
    [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(newcomer.wheel).read(entry_points).decode()
    assert "sensor_scoring_airflow:get_provider_info" in text and "sensor_scoring_airflow.plugin:ScoringPlugin" in text


def test_the_packages_resolve_inside_the_venv_and_dev_is_not_there(newcomer: Newcomer) -> None:
    probe = (
        "import json, sys, sensor_scoring, sensor_scoring_airflow, sensor_scoring.validation as v\n"
        "from importlib import resources\n"
        "print(json.dumps({'files': [sensor_scoring.__file__, sensor_scoring_airflow.__file__], 'path': sys.path,"
        " 'bounds': resources.files(v).joinpath('physical_bounds.json').is_file()}))"
    )
    found = newcomer.json("python", "-c", probe)
    site = newcomer.venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert all(Path(file).is_relative_to(site) for file in found["files"]), found["files"]
    assert found["bounds"]
    assert not [entry for entry in found["path"] if entry and Path(entry).resolve().is_relative_to(REPO)]
    assert not list(site.glob("__editable__*")) and not list(site.glob("*sensor_scoring*.pth"))

    for name in ("dev", "tests"):
        done = newcomer.run("python", "-c", f"import sensor_scoring_airflow, {name}")
        assert done.returncode != 0 and f"ModuleNotFoundError: No module named '{name}'" in done.stderr


def test_the_dag_imports_from_the_dags_folder_alone(newcomer: Newcomer) -> None:
    assert newcomer.json("airflow", "dags", "list-import-errors", "--local", "--output", "json") == []
    dags = newcomer.json("airflow", "dags", "list", "--local", "--output", "json")
    assert [d["dag_id"] for d in dags] == ["sensor_scoring"]


def test_the_extra_link_and_the_provider_are_registered(newcomer: Newcomer) -> None:
    [plugin] = newcomer.json("airflow", "plugins", "--output", "json")
    assert plugin["name"] == "sensor_scoring" and plugin["source"].startswith("sensor-scoring==0.1.0: EntryPoint(")
    assert plugin["operator_extra_links"] == ["<sensor_scoring_airflow.links.ShardOutputsLink object>"]
    assert newcomer.json("airflow", "providers", "get", "sensor-scoring", "--output", "json") == [
        {"Provider": "sensor-scoring", "Version": "0.1.0"}
    ]
    links = newcomer.json("airflow", "providers", "links", "--output", "json")
    assert {"extra_link_class_name": "sensor_scoring_airflow.links.ShardOutputsLink"} in links


def test_airflow_dags_test_scores_an_hour_on_local_storage(newcomer: Newcomer) -> None:
    """Windows and a promoted model made with the venv's own CLI, then ``airflow dags test`` of the hour ending at
    START + 4 h commits one prediction per landed window of hour START + 3 h."""
    landed = newcomer.json(
        "sensor-scoring",
        "simulate",
        "--devices",
        str(DEVICES),
        "--tags",
        str(TAGS),
        "--start",
        START.isoformat(),
        "--end",
        (START + 4 * H).isoformat(),
        "--seed",
        "7",
    )
    assert landed["hours"] == 4 and landed["windows"] == DEVICES * TAGS * 4 * 60
    trained = newcomer.json(
        "sensor-scoring",
        "train",
        "--start",
        START.isoformat(),
        "--end",
        (START + 3 * H).isoformat(),
        "--version",
        "v-newcomer",
        "--promote",
        "--holdout-hours",
        "1",
        *GATE_TAKES_ANY,
    )
    assert trained["models"] == DEVICES * TAGS and trained["promoted"] is True

    done = newcomer.run("airflow", "dags", "test", "sensor_scoring", (START + 4 * H).isoformat(), timeout=900)
    assert done.returncode == 0 and "state=success" in done.stdout + done.stderr, (done.stdout + done.stderr)[-4000:]
    predictions, manifest = read_partition(LocalStorage(newcomer.storage), "predictions", START + 3 * H)
    assert len(predictions) == DEVICES * TAGS * 60 == manifest["counts"]["scored"]
    assert manifest["counts"]["landed"] == len(predictions) and manifest["model_version"] == "v-newcomer"
    assert not predictions.duplicated(["device_id", "tag", "window_end"]).any()
    assert predictions["window_end"].min() == START + 3 * H
    assert predictions["window_end"].max() == START + 4 * H - 60 * S
