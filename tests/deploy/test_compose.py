"""docker-compose.yaml, .env.example and the Dockerfile, checked without a Docker engine (there is none here).

What would break a `docker compose up` or a build, or silently diverge from the code, is asserted on the parsed
files: services and their images, health-gated start order, mounts, the Airflow connections (parsed by Airflow
itself), the settings' names against what the code reads, and that both images install the one lock. The
simulator service's shell loop is run for real against Azurite, and the alert sinks' commands for real on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sensor_scoring import settings as config
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
AIRFLOW_SERVICES = [*AIRFLOW_COMPONENTS, "airflow-init"]
#: ${NAME}, ${NAME:-default}, ${NAME-default}; "$$" escapes a dollar for the container's shell.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = shlex.split(value)[0] if value.strip() else ""
    return values


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's substitution: a set variable, else the default; then $$ -> $."""
    env = env or {}
    return VARIABLE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text).replace("$$", "$")


def variables(node: object) -> dict[str, set[str]]:
    """Every ${NAME...} in the compose file, with the defaults it is given."""
    found: dict[str, set[str]] = {}
    for text in re.findall(r"[^\n]+", yaml.safe_dump(node, width=10**6)):
        for name, default in VARIABLE.findall(text):
            found.setdefault(name, set()).add(default)
    return found


def test_services_follow_airflows_official_layout_and_each_has_an_image_or_a_build():
    assert set(SERVICES) >= {"postgres", "azurite", "simulator", *AIRFLOW_SERVICES}
    stages = dockerfile_stages()
    for name, service in SERVICES.items():
        assert service.get("image") or service.get("build"), name
        if "build" in service:
            assert service["build"]["context"] == "." and service["build"]["target"] in stages, name
        image = interpolate(service.get("image", ""))
        if image.startswith("sensor-scoring-"):  # a local tag: built here, or compose would try to pull it
            assert "build" in service, f"{name} uses the local image {image} without building it"
        elif image:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"{name}: {image}"
    # one tag, one build target: services sharing an image build it identically
    targets: dict[str, set[str]] = {}
    for service in SERVICES.values():
        if "build" in service:
            targets.setdefault(interpolate(service["image"]), set()).add(service["build"]["target"])
    assert all(len(t) == 1 for t in targets.values()), targets
    for name, command in AIRFLOW_COMPONENTS.items():
        assert SERVICES[name]["command"] == command
        assert SERVICES[name]["build"]["target"] == "airflow"
        assert SERVICES[name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert SERVICES["simulator"]["build"]["target"] == "scorer"
    init_env = SERVICES["airflow-init"]["environment"]
    assert init_env["_AIRFLOW_DB_MIGRATE"] == "true" and init_env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    # every Airflow component talks to the one Postgres, with the same shared secrets
    for setting in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert len({SERVICES[name]["environment"][setting] for name in AIRFLOW_SERVICES}) == 1, setting
    assert "@postgres/" in SERVICES["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_start_order_is_gated_on_health_and_on_the_init_service_finishing():
    for name, service in SERVICES.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            if condition == "service_healthy":
                test = SERVICES[dependency].get("healthcheck", {}).get("test")
                assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} waits for {dependency}'s health, it has none"
            elif condition == "service_completed_successfully":
                assert "restart" not in SERVICES[dependency], f"{dependency} is waited for to finish, but restarts"
            else:
                pytest.fail(f"{name} -> {dependency}: {condition} does not wait for readiness")
    for name in AIRFLOW_COMPONENTS:
        needs = SERVICES[name]["depends_on"]
        assert needs["airflow-init"]["condition"] == "service_completed_successfully"
        assert (
            needs["postgres"]["condition"] == "service_healthy" and needs["azurite"]["condition"] == "service_healthy"
        )
        assert SERVICES[name]["healthcheck"]["test"] and SERVICES[name]["restart"] == "always"
    assert SERVICES["airflow-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["simulator"]["depends_on"]["azurite"]["condition"] == "service_healthy"
    # no cycle: a topological order exists
    pending = {name: set(service.get("depends_on") or {}) for name, service in SERVICES.items()}
    while pending:
        ready = [name for name, deps in pending.items() if not deps & set(pending)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        for name in ready:
            del pending[name]


def test_health_checks_probe_the_ports_the_services_listen_on():
    azurite = SERVICES["azurite"]
    port = azurite["command"][azurite["command"].index("--blobPort") + 1]
    assert f"connect({port}," in azurite["healthcheck"]["test"][-1]
    assert azurite["ports"][0].startswith("127.0.0.1:")  # Azurite's well-known key: loopback only
    assert "1025" in SERVICES["mail-sink"]["entrypoint"][-1]
    assert "1025" in SERVICES["mail-sink"]["healthcheck"]["test"][-1]
    assert '("0.0.0.0", 8000)' in SERVICES["webhook-sink"]["entrypoint"][-1]
    assert "8000" in SERVICES["webhook-sink"]["healthcheck"]["test"][-1]
    assert "8974" in " ".join(SERVICES["airflow-scheduler"]["healthcheck"]["test"])
    assert SERVICES["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_airflow_services_mount_dags_from_the_checkout():
    for name in AIRFLOW_SERVICES:
        mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in SERVICES[name]["volumes"]}
        assert mounts["./dags"] == "/opt/airflow/dags", name
        assert "./plugins" not in mounts, name  # the Airflow side is installed and loads through entry points
        assert mounts["airflow-logs"] == "/opt/airflow/logs"
        assert "AIRFLOW__CORE__DAGS_FOLDER" not in SERVICES[name]["environment"]  # the image default is the mount
    assert (REPO / "dags" / "sensor_scoring.py").is_file() and not (REPO / "plugins").exists()
    named = {
        volume.split(":")[0]
        for service in SERVICES.values()
        for volume in service.get("volumes", [])
        if not volume.startswith(".")
    }
    assert named <= set(COMPOSE["volumes"])


def airflow_connections(env: dict[str, str] | None = None) -> dict[str, dict]:
    values = SERVICES["airflow-scheduler"]["environment"]
    return {
        key.removeprefix("AIRFLOW_CONN_").lower(): json.loads(interpolate(value, env))
        for key, value in values.items()
        if key.startswith("AIRFLOW_CONN_")
    }


@pytest.mark.parametrize("settings", ["defaults", ".env.example"])
def test_connections_are_created_at_startup_with_the_right_types(settings):
    from airflow.models.connection import Connection
    from airflow.providers.microsoft.azure.hooks.batch import AzureBatchHook

    env = env_example() if settings == ".env.example" else None
    connections = airflow_connections(env)
    expected = {
        "scoring_storage": "wasb",
        "azure_batch_default": "azure_batch",
        "scoring_smtp": "smtp",
        "scoring_alert_webhook": "http",
    }
    assert {conn_id: body["conn_type"] for conn_id, body in connections.items()} == expected
    for name in AIRFLOW_SERVICES:  # the same connections in every component
        assert {k for k in SERVICES[name]["environment"] if k.startswith("AIRFLOW_CONN_")} == {
            f"AIRFLOW_CONN_{conn_id.upper()}" for conn_id in expected
        }
    parsed = {conn_id: Connection.from_json(json.dumps(body), conn_id=conn_id) for conn_id, body in connections.items()}

    # storage: what the provider's WasbHook makes of it (sensor_scoring_airflow.connections) is the azurite service
    from sensor_scoring_airflow.connections import connection_storage

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_SCORING_STORAGE", json.dumps(connections["scoring_storage"]))
        client = connection_storage("scoring_storage").service_client
    assert client.account_name == "devstoreaccount1" and client.url.startswith("http://azurite:10000/")
    # Batch: the provider's default connection id, with the fields its hook reads
    assert (
        AzureBatchHook.default_conn_name
        == "azure_batch_default"
        == interpolate(SERVICES["airflow-scheduler"]["environment"]["SCORING_BATCH_CONN_ID"], env)
    )
    assert set(parsed["azure_batch_default"].extra_dejson) == {"account_url"}
    # alerts: the sinks of this stack, with what the alert code reads
    smtp = parsed["scoring_smtp"]
    assert (smtp.host, smtp.port) == ("mail-sink", 1025)
    assert smtp.extra_dejson["to"] and smtp.extra_dejson["from_email"]
    assert smtp.extra_dejson["disable_tls"] is True and smtp.extra_dejson["disable_ssl"] is True
    webhook = parsed["scoring_alert_webhook"]
    assert (webhook.schema, webhook.host, webhook.port) == ("http", "webhook-sink", 8000)
    assert webhook.extra_dejson == {"endpoint": "/alerts"}  # the path; the alert code posts to it
    assert {smtp.host, webhook.host} <= set(SERVICES)


def test_connections_are_read_by_airflow_from_the_environment(monkeypatch):
    """The JSON form really is how Airflow's environment backend defines them (the lookup the tasks do)."""
    from airflow.sdk import Connection

    from sensor_scoring_airflow.connections import storage_setting

    for conn_id, body in airflow_connections().items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))
    assert storage_setting().endswith("BlobEndpoint=http://azurite:10000/devstoreaccount1;")
    assert Connection.get("scoring_smtp").extra_dejson["to"] == "oncall@sensor-scoring.local"


def test_env_example_lists_every_setting_with_the_compose_default():
    example = env_example()
    used = variables(COMPOSE)
    assert set(example) == set(used), (
        f"only in .env.example: {set(example) - set(used)}; only in compose: {set(used) - set(example)}"
    )
    for name, defaults in used.items():
        assert defaults == {example[name]}, f"{name}: compose defaults {defaults}, .env.example {example[name]!r}"


def code_text() -> str:
    return "\n".join(path.read_text() for folder in ("src", "dags") for path in (REPO / folder).rglob("*.py"))


def test_scoring_settings_are_names_the_code_reads():
    """A SCORING_* variable the code does not read is a typo or a dead setting."""
    readable = set(re.findall(r"\bSCORING_[A-Z0-9_]+\b", code_text()))
    readable |= {f"SCORING_CONTAINER_{name.upper()}" for name in config.Containers().__dict__}  # built in config.py
    for name, service in SERVICES.items():
        for key in service.get("environment") or {}:
            if key.startswith("SCORING_"):
                assert key in readable, f"{name}: {key} is not read anywhere in src/ or dags/"
    batch = {
        "SCORING_BACKEND",
        "SCORING_BATCH_CONN_ID",
        "SCORING_BATCH_POOL_ID",
        "SCORING_BATCH_VM_SIZE",
        "SCORING_BATCH_MAX_NODES",
        "SCORING_BATCH_MAX_LOW_PRIORITY_NODES",
        "SCORING_SCORER_IMAGE",
        "SCORING_BATCH_SAS_HOURS",
        "SCORING_BATCH_TASK_SLOTS_PER_NODE",
        "SCORING_BATCH_NODE_IMAGE",
        "SCORING_BATCH_NODE_AGENT_SKU",
        "SCORING_BATCH_POLL_SECONDS",
        "SCORING_BATCH_MAX_POLL_SECONDS",
    }
    assert batch <= set(SERVICES["airflow-scheduler"]["environment"])
    assert {config.STORAGE_ENV, *(f"SCORING_CONTAINER_{n.upper()}" for n in config.Containers().__dict__)} <= set(
        SERVICES["simulator"]["environment"]
    )


def test_start_date_default_in_compose_is_the_codes_default():
    environment = SERVICES["airflow-scheduler"]["environment"]
    assert (
        interpolate(environment[config.START_DATE_ENV])
        == config.DEFAULT_START_DATE
        == env_example()[config.START_DATE_ENV]
    )


def test_batch_defaults_in_compose_are_the_codes_defaults():
    """The stack's defaults are what the backend would use with the variable unset (but the image tag)."""
    from sensor_scoring.backends.azure_batch import BatchSettings

    environment = SERVICES["airflow-scheduler"]["environment"]
    from_compose = BatchSettings.from_env(
        {
            key: interpolate(value)
            for key, value in environment.items()
            if isinstance(value, str) and key.startswith("SCORING_")
        }
    )
    defaults = BatchSettings()
    for name in (
        "conn_id",
        "pool_id",
        "vm_size",
        "max_nodes",
        "max_low_priority_nodes",
        "sas_hours",
        "node_image",
        "node_agent_sku",
        "task_slots_per_node",
        "poll_s",
        "max_poll_s",
    ):
        assert getattr(from_compose, name) == getattr(defaults, name), name
    assert from_compose.scorer_image == interpolate(SERVICES["simulator"]["image"])  # the tag compose builds
    assert interpolate(environment["SCORING_BACKEND"]) == "local"


# --- Dockerfile ---------------------------------------------------------------------------------------------


def dockerfile_stages(path: Path = REPO / "Dockerfile") -> dict[str, dict]:
    """Stage name -> {"from": image, "steps": [(INSTRUCTION, arguments)]}, continuation lines joined."""
    logical, pending = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append(" ".join((pending + raw).split()))
        pending = ""
    stages: dict[str, dict] = {}
    current = None
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            image, _, name = arguments.partition(" AS ")
            current = name.strip()
            stages[current] = {"from": image.strip(), "steps": []}
        else:
            stages[current]["steps"].append((instruction.upper(), arguments))
    return stages


def runs(stage: dict) -> list[str]:
    return [arguments for instruction, arguments in stage["steps"] if instruction == "RUN"]


def copies(stage: dict) -> list[str]:
    return [arguments for instruction, arguments in stage["steps"] if instruction == "COPY"]


def lock_pins(path: Path) -> set[str]:
    return {line.split("#", 1)[0].strip() for line in path.read_text().splitlines() if line.split("#", 1)[0].strip()}


def test_both_images_install_the_same_lock():
    stages = dockerfile_stages()
    assert list(stages) == ["airflow", "scorer-build", "scorer"]
    lock = lock_pins(REPO / "requirements.txt")

    airflow = stages["airflow"]
    assert "apache-airflow==3.3.2" in lock and airflow["from"] == "apache/airflow:3.3.2-python3.11"
    assert any(c.endswith("requirements.txt /opt/sensor-scoring/requirements.txt") for c in copies(airflow))
    [install] = [r for r in runs(airflow) if "-r /opt/sensor-scoring/requirements.txt" in r]
    assert install.startswith("pip install") and '"apache-airflow==${AIRFLOW_VERSION}"' in install
    assert not re.search(r"\s(-U|--upgrade)\b", install)  # Airflow is pinned to the base image's, never upgraded
    assert 'os.environ["AIRFLOW_VERSION"]' in install  # and the build checks it still is
    [project] = [r for r in runs(airflow) if "--no-deps /opt/sensor-scoring" in r]
    assert "--no-deps" in project
    assert "--chown=airflow:0 src/ /opt/sensor-scoring/src/" in copies(airflow)  # both packages of the distribution
    assert not [c for c in copies(airflow) if "plugins" in c]
    # the Batch autoscale formula is package data: the image needs no path setting for it
    from sensor_scoring.backends.azure_batch import DEFAULT_FORMULA, FORMULA_ENV

    assert not [a for i, a in airflow["steps"] if i == "ENV" and a.startswith(f"{FORMULA_ENV}=")]
    assert DEFAULT_FORMULA.is_file() and DEFAULT_FORMULA.parent.name == "backends"

    build = stages["scorer-build"]
    assert any(c == "requirements-scorer.txt ./" for c in copies(build))
    [install] = [r for r in runs(build) if "-r requirements-scorer.txt" in r]
    assert "--no-deps" in install and "--only-binary=:all:" in install and " check" in install
    scorer_pins = lock_pins(REPO / "requirements-scorer.txt")
    assert scorer_pins and scorer_pins <= lock  # a subset of the same lock, line for line
    [project] = [r for r in runs(build) if "install --no-deps ." in r]
    assert "import sensor_scoring.cli" in project
    # the Python of both images is the lock's
    assert 'requires-python = ">=3.11,<3.12"' in (REPO / "pyproject.toml").read_text()
    assert build["from"] == stages["scorer"]["from"] == "python:3.11-slim"


def test_the_scorer_image_is_small_non_root_and_runs_the_batch_command_line():
    from sensor_scoring.backends import shard_command

    scorer = dockerfile_stages()["scorer"]
    assert copies(scorer) == ["--from=scorer-build /opt/venv /opt/venv"]  # only the virtualenv crosses over
    assert not any(re.search(r"\b(apt-get|apt|pip|gcc|make)\b", r) for r in runs(scorer))  # no installer, no compiler
    [user] = [arguments for instruction, arguments in scorer["steps"] if instruction == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert not [a for i, a in scorer["steps"] if i == "ENTRYPOINT"]  # Batch's command line is the whole command
    [cmd] = [json.loads(a) for i, a in scorer["steps"] if i == "CMD"]
    assert cmd[:3] == shard_command("az://x/spec.json")[:3] == ["python", "-m", "sensor_scoring"]
    [env] = [a for i, a in scorer["steps"] if i == "ENV"]
    assert "PATH=/opt/venv/bin:$PATH" in env  # `python` is the virtualenv's
    assert not [a for i, a in scorer["steps"] if i == "HEALTHCHECK"]
    for stage in dockerfile_stages().values():
        assert ":" in stage["from"] and not stage["from"].endswith(":latest")


def test_dockerignore_keeps_local_state_out_but_not_what_the_images_copy():
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv", "dev/node/node_modules", ".env", "pool.json"} <= set(ignored)  # .env holds keys
    copied = {"requirements.txt", "requirements-scorer.txt", "pyproject.toml", "src", "src/sensor_scoring", "dags"}
    assert not copied & {line.rstrip("/") for line in ignored}


# --- the alert sinks, run for real (on a free port instead of their fixed in-network one) ---------------------


def run_sink(name: str, port_in_compose: str, tmp_path: Path, started: list[subprocess.Popen]):
    from dev.azurite import free_port, port_open

    port = free_port()
    command = [
        part.replace(port_in_compose, str(port)).replace("0.0.0.0", "127.0.0.1")
        for part in SERVICES[name]["entrypoint"]
    ]
    assert command[0] == "python"
    command[0] = sys.executable  # the Airflow image's python: the lock's packages (aiosmtpd among them)
    log = tmp_path / f"{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    started.append(process)
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return port, log


def test_the_alert_sinks_receive_what_the_connections_send(tmp_path):
    import smtplib
    import urllib.request
    from email.message import EmailMessage

    started: list[subprocess.Popen] = []
    try:
        mail_port, mail_log = run_sink("mail-sink", "1025", tmp_path, started)
        hook_port, hook_log = run_sink("webhook-sink", "8000", tmp_path, started)
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "airflow@sensor-scoring.local", "oncall@x", "task_failed"
        message.set_content("score_shard failed")
        with smtplib.SMTP("127.0.0.1", mail_port, timeout=10) as smtp:
            smtp.send_message(message)
        request = urllib.request.Request(
            f"http://127.0.0.1:{hook_port}/alerts",
            data=b'{"event": "task_failed"}',
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            "score_shard failed" in mail_log.read_text() and "task_failed" in hook_log.read_text()
        ):
            time.sleep(0.2)
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    assert "Subject: task_failed" in mail_log.read_text() and "score_shard failed" in mail_log.read_text()
    assert 'webhook /alerts: {"event": "task_failed"}' in hook_log.read_text()


# --- the simulator service's loop, run for real ----------------------------------------------------------------

FAKE_DATE = """#!{python}
# `date` for the simulator loop: `date -u +FMT` answers the next of $FAKE_TIMES (then the last one again);
# `date -u -d "-N hours" +FMT` is relative to the first. Calls are counted in $FAKE_STATE.
import datetime, os, sys
args = sys.argv[1:]
fmt = next(a for a in args if a.startswith("+"))[1:]
times = [datetime.datetime.fromisoformat(t) for t in os.environ["FAKE_TIMES"].split(",")]
if "-d" in args:
    moment = times[0] + datetime.timedelta(hours=int(args[args.index("-d") + 1].split()[0]))
else:
    state = os.environ["FAKE_STATE"]
    calls = int(open(state).read()) if os.path.exists(state) else 0
    moment = times[min(calls, len(times) - 1)]
    open(state, "w").write(str(calls + 1))
print(moment.strftime(fmt))
"""


@pytest.mark.azurite
def test_simulator_service_loop_lands_backfill_current_hour_and_the_end_of_each_hour(
    blob, containers, azurite, tmp_path
):
    """The service's own shell script, its clock replaced: rounds at 10:58:50 and 11:00:05 would leave the window
    ending 10:59 unlanded (more than a minute between rounds) unless the loop lands an ended hour whole."""
    import pandas as pd

    from sensor_scoring.windows import folders_for_interval, read_landed

    service = SERVICES["simulator"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    script = interpolate(service["command"][0])
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # the image's python
    (shim / "date").write_text(FAKE_DATE.format(python=sys.executable))
    for tool in shim.iterdir():
        tool.chmod(0o755)
    state = tmp_path / "date-calls"
    env = {
        "PATH": f"{shim}:{os.environ['PATH']}",
        "SCORING_STORAGE": azurite.connection_string,
        "SIMULATOR_DEVICES": "2",
        "SIMULATOR_TAGS": "1",
        "SIMULATOR_BACKFILL_HOURS": "1",
        "SIMULATOR_INTERVAL_SECONDS": "0",
        "PYTHONPATH": str(REPO),
        "FAKE_STATE": str(state),
        "FAKE_TIMES": "2026-11-24T10:58:50,2026-11-24T10:58:50,2026-11-24T11:00:05",
        **{k: v for k, v in os.environ.items() if k.startswith("SCORING_CONTAINER_")},
    }
    log = tmp_path / "simulator.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["/bin/sh", "-c", script],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        # call 1: the backfill's end; 2: the round at 10:58:50; 3: 11:00:05; 4: the next round has started
        while time.monotonic() < deadline and process.poll() is None and "failed" not in log.read_text():
            if state.exists() and int(state.read_text() or 0) >= 4:
                break
            time.sleep(0.5)
        assert process.poll() is None, "the simulator loop exited: " + log.read_text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    output = log.read_text()
    assert "simulator: backfilling the last 1 hours" in output and "failed" not in output, output

    start = pd.Timestamp("2026-11-24T09:00Z")
    windows, _ = read_landed(blob, containers.windows, folders_for_interval(start, start + pd.Timedelta(hours=3)))
    ends = (
        windows.drop_duplicates(["device_id", "tag", "window_end"])
        .groupby(windows["window_end"].dt.floor("h"))["window_end"]
        .count()
    )
    # 09:00 (backfill) and 10:00 whole, 60 windows x 2 sensors each, including 10:59; 11:00 up to 11:00:05
    assert ends.to_dict() == {start: 120, start + pd.Timedelta(hours=1): 120, start + pd.Timedelta(hours=2): 2}
    assert not windows.duplicated(["device_id", "tag", "window_end"]).any()  # re-landings replaced, not added
