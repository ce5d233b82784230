"""Session fixtures for the tests against a real Airflow: the dev stack, an SMTP server, a webhook receiver.

The stack is ``dev.devstack.DevStack``, what ``make ui`` runs: PostgreSQL, Azurite, and Airflow's scheduler
(LocalExecutor), DAG processor, triggerer and API server. Registered as a pytest plugin in conftest.py, so the
end-to-end test and the browser test share one stack (starting it costs half a minute). Everything started here
is stopped in ``finally`` blocks: servers in this process by their own shutdown, child processes by their
process group. After every test that uses the stack, a dead component or a traceback in the scheduler's or
triggerer's log fails the test.

The data: ``FLEET`` sensors, simulated for the ``SEED_HOURS`` hours that ended two hours before the test session
started, a production model version ``v-e2e`` and a second, unpromoted ``v-alt`` (trained differently) for the
subset rescoring. The last complete hour has not landed: its scheduled run (made when the DAG is unpaused)
waits for windows all session long, so backfills and rescorings run while a scheduled run is active, as in
production.
"""

from __future__ import annotations

import email
import email.policy
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dev.azurite import free_port
from dev.devstack import AirflowApi, DevStack, stop_on_signals
from sensor_scoring import settings as config

H = timedelta(hours=1)
FLEET = {"devices": 3, "tags": 2}
SENSORS = FLEET["devices"] * FLEET["tags"]
SEED_HOURS = 7
#: Hours before the session's hour that have not landed (the scheduled run's hour and the one before).
UNLANDED_HOURS = 2
WEBHOOK_PATH = "/hooks/airflow-alerts"
ALERT_TO = "oncall@example.com"
ALERT_FROM = "airflow@example.com"
#: Fast enough for a test: no retries (a failing task fails at once), a busy scheduler.
FAST_AIRFLOW = {
    "SCORING_TASK_RETRIES": "0",
    "SCORING_RETRY_DELAY_SECONDS": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "2",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
}


@dataclass
class Mailbox:
    """What the SMTP server received: parsed messages with their envelopes."""

    messages: list[email.message.EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's handler hook
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    host: str
    port: int
    mailbox: Mailbox


@pytest.fixture(scope="session")
def smtp_server():
    """A real SMTP server (aiosmtpd) on a free loopback port, in a thread of this process."""
    from aiosmtpd.controller import Controller

    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield SmtpServer(controller.hostname, controller.port, mailbox)
    finally:
        controller.stop()


class WebhookReceiver(ThreadingHTTPServer):
    """Records every POST (path, headers, JSON body) and answers 200, like a chat webhook."""

    daemon_threads = True

    def __init__(self) -> None:
        self.received: list[dict] = []
        super().__init__(("127.0.0.1", 0), _WebhookHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _WebhookHandler(BaseHTTPRequestHandler):
    server: WebhookReceiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        self.server.received.append({"path": self.path, "headers": dict(self.headers), "body": body, "json": payload})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture(scope="session")
def webhook_receiver():
    """An HTTP receiver on a free loopback port, served by a thread of this process."""
    server = WebhookReceiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Standalone:
    """The running stack and what the tests need to know about its data."""

    stack: DevStack
    api: AirflowApi
    now_hour: datetime  # the hour in progress when the data was seeded

    @property
    def landed_hours(self) -> list[datetime]:
        """The seeded hours, oldest first: each test scores hours of its own among them."""
        first = self.now_hour - (SEED_HOURS + UNLANDED_HOURS) * H
        return [first + i * H for i in range(SEED_HOURS)]

    def scheduled_run(self) -> dict:
        """The scheduled run of an unlanded hour, waiting for windows (the DAG is unpaused at the start)."""
        deadline = time.monotonic() + 120  # the scheduler creates it within a heartbeat or two of the unpause
        while True:
            runs = [r for r in self.api.runs(run_type="scheduled") if r["state"] in ("queued", "running")]
            if runs:
                return runs[-1]
            assert time.monotonic() < deadline, f"no active scheduled run: {self.api.runs(run_type='scheduled')}"
            time.sleep(2)

    @property
    def storage(self):
        from sensor_scoring.storage import BlobStorage

        return BlobStorage(self.stack.storage_setting)

    def wait_for_backfill_runs(self, hours: list[datetime], timeout_s: float = 300) -> list[dict]:
        """The backfill runs of ``hours`` once all have finished (the scheduler creates them asynchronously).

        300 s: three one-hour runs of the test fleet take about a minute and a half on an idle 2-core machine.
        """
        wanted = set(hours)
        deadline = time.monotonic() + timeout_s
        while True:
            runs = [
                r
                for r in self.api.runs(run_type="backfill")
                if datetime.fromisoformat(r["data_interval_start"]) in wanted
            ]
            if len(runs) >= len(wanted) and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill runs: {[(r['dag_run_id'], r['state']) for r in runs]}")
            time.sleep(3)

    def wait_backfill_done(self, backfill_id: int, timeout_s: float = 60) -> dict:
        """The scheduler marks a backfill completed a little after its last run finished (a heartbeat or two)."""
        deadline = time.monotonic() + timeout_s
        while (backfill := self.api.get(f"backfills/{backfill_id}"))["completed_at"] is None:
            assert time.monotonic() < deadline, f"backfill {backfill_id} not marked completed"
            time.sleep(2)
        return backfill

    def latest_backfill(self) -> dict:
        """The newest backfill of the DAG, however it was created (UI, CLI or REST)."""
        backfills = self.api.get("backfills", params={"dag_id": "sensor_scoring", "limit": 100})["backfills"]
        return max(backfills, key=lambda b: b["id"])


def alert_connections(smtp: SmtpServer, webhook: WebhookReceiver) -> dict[str, str]:
    """The two alert channels as Airflow connections in the environment (see docs/operating.md)."""
    return {
        "AIRFLOW_CONN_SCORING_SMTP": json.dumps(
            {
                "conn_type": "smtp",
                "host": smtp.host,
                "port": smtp.port,
                "extra": {
                    "to": ALERT_TO,
                    "from_email": ALERT_FROM,
                    "disable_ssl": True,
                    "disable_tls": True,
                    "timeout": 10,
                    "retry_limit": 1,
                },
            }
        ),
        "AIRFLOW_CONN_SCORING_ALERT_WEBHOOK": json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": webhook.server_address[1],
                "schema": "http",
                "extra": {"endpoint": WEBHOOK_PATH},
            }
        ),
    }


def seed_data(stack: DevStack, now: datetime) -> datetime:
    """``SEED_HOURS`` whole simulated hours ending ``UNLANDED_HOURS`` before this hour, ``v-e2e`` promoted, ``v-alt``
    not. The last hour's late windows land in the next folder; the folders after it stay empty."""
    from dev.demo import ensure_data
    from sensor_scoring.storage import BlobStorage
    from tests.support.training import train_and_register

    now_hour = now.replace(minute=0, second=0, microsecond=0)
    storage, containers = BlobStorage(stack.storage_setting), config.Containers()
    first = now_hour - (SEED_HOURS + UNLANDED_HOURS) * H
    ensure_data(storage, containers, FLEET["devices"], FLEET["tags"], first, now_hour - UNLANDED_HOURS * H)
    train_and_register(storage, containers, first, first + 2 * H, version="v-e2e", promote=True)
    train_and_register(storage, containers, first, first + H, version="v-alt", nu=0.2)
    return now_hour


@pytest.fixture(scope="session")
def standalone(tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpServer, webhook_receiver: WebhookReceiver):
    """The dev stack (PostgreSQL, Azurite, Airflow) with seeded data and the DAG unpaused; stopped by process group."""
    home: Path = tmp_path_factory.mktemp("standalone")
    stack = DevStack(home, durable=False, airflow_env=FAST_AIRFLOW | alert_connections(smtp_server, webhook_receiver))
    with stop_on_signals((signal.SIGTERM, signal.SIGHUP)):  # a terminated pytest still stops the stack
        try:
            stack.start_storage()
            now_hour = seed_data(stack, datetime.now(timezone.utc))
            stack.start(timeout_s=300)  # ~30 s idle: migrate, then four Airflow processes and the DAG's first parse
            api = stack.api()
            api.unpause()
            yield Standalone(stack, api, now_hour)
        finally:
            survivors = stack.stop()
    assert not survivors, f"processes of the stack still running after stop: {survivors}"


@pytest.fixture(autouse=True)
def stack_stays_healthy(request: pytest.FixtureRequest):
    """After each test on a dev stack: every component still running, no scheduler or triggerer traceback.

    Applies to tests that use the shared ``standalone`` stack, or a stack of their own through a fixture
    named ``own_stack`` (yielding a DevStack).
    """
    names = [n for n in ("standalone", "own_stack") if n in request.fixturenames]
    if not names:
        yield
        return
    value = request.getfixturevalue(names[0])
    stack: DevStack = value.stack if isinstance(value, Standalone) else value
    marks = stack.log_marks()
    yield
    stack.check()
    found = stack.tracebacks(since=marks)
    assert not found, "tracebacks in the dev stack's logs during the test:\n" + "\n\n".join(
        f"--- {name} ({stack.components[name].log}):\n" + "\n...\n".join(excerpts) for name, excerpts in found.items()
    )


@pytest.fixture(scope="session")
def full_run(standalone: Standalone) -> dict:
    """One successful manual run scoring a whole hour with two sensors per shard (three mapped shards)."""
    hour = standalone.landed_hours[2]
    run = standalone.api.trigger(
        {"window_start": hour.isoformat(), "window_end": (hour + H).isoformat(), "sensors_per_shard": 2}
    )
    # the first run of the session: ~40 s on an idle machine, tasks start slower while the DAG processor warms up
    finished = standalone.api.wait_for_runs([run["dag_run_id"]], timeout_s=300)[run["dag_run_id"]]
    assert finished["state"] == "success", finished
    return finished | {"hour": hour}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing browser test leaves a screenshot of what the browser showed in test-artifacts/."""
    outcome = yield
    report = outcome.get_result()
    page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and page is not None:
        artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        try:
            page.screenshot(path=artifacts / f"browser-failed-{item.name}.png", full_page=True)
        except Exception as exc:  # the browser may be what failed
            report.sections.append(("screenshot", f"no screenshot: {exc}"))
