"""Alerts for real: a failing DAG run delivers email to an aiosmtpd server and JSON to an HTTP receiver on loopback.

Connections come from ``AIRFLOW_CONN_*`` variables in JSON form, as a deployment would define them. Also: the
channels skipped quietly when not configured, logged (never raised) when unreachable, the deadline alert on the
DAG as the DAG processor parses it, its callback run through Airflow's own triggerer callback trigger, and the
anomaly-count alert.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import datetime, timedelta, timezone
from email.message import Message
from typing import TYPE_CHECKING, Any

import pytest

from dev.azurite import free_port
from sensor_scoring import settings as config
from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage
from sensor_scoring_airflow import alerts
from tests.conftest import REPO
from tests.support.alerting import RECIPIENTS, smtp_conn, webhook_conn
from tests.support.helpers import START, sample_manifest

if TYPE_CHECKING:
    from sensor_scoring.steps.health import HealthManifest

H = timedelta(hours=1)


@pytest.fixture
def fast_failing_dag(monkeypatch, airflow_db):
    """The DAG parsed with no retries, as the end-to-end tests configure it, so a failure is final at once."""
    from dev.demo import load_dag

    monkeypatch.setenv(config.TASK_RETRIES_ENV, "0")
    monkeypatch.setenv(config.RETRY_DELAY_ENV, "1")
    return load_dag(REPO / "dags" / "sensor_scoring.py")


def html_of(message: Message) -> str:
    part = next(p for p in message.walk() if p.get_content_type() == "text/html")
    return part.get_payload(decode=True).decode()


@pytest.mark.azurite
@pytest.mark.airflow
def test_failed_run_emails_and_posts_task_and_run_alerts(fast_failing_dag, blob, containers, alert_connections):
    smtp_sink, http_sink = alert_connections
    assert fast_failing_dag.task_dict["plan_shards"].retries == 0
    simulate_to_storage(
        blob,
        SimulationConfig(devices=2, tags=1, seed=1),
        START,
        START + 2 * H,
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    run = fast_failing_dag.test(logical_date=START + H, run_conf={"model_version": "no-such-version"})
    assert str(run.state) == "failed"

    posts = {p["json"]["event"]: p for p in http_sink.received}
    assert sorted(posts) == ["dag_run_failed", "task_failed"] and len(http_sink.received) == 2
    task = posts["task_failed"]["json"]
    assert posts["task_failed"]["path"] == "/hooks/scoring"
    assert posts["task_failed"]["content_type"] == "application/json"
    assert list(task)[:1] == ["text"] and set(alerts.PAYLOAD_KEYS) <= set(task)
    assert task["dag_id"] == "sensor_scoring" and task["run_id"] == run.run_id
    assert task["task_id"] == "plan_shards" and task["map_index"] == -1 and task["try_number"] == 1
    assert task["error"].startswith(
        "AirflowFailException: RegistryError: no model alias or version named 'no-such-version'"
    )
    assert task["log_url"].endswith(
        f"/dags/sensor_scoring/runs/{run.run_id.replace(':', '%3A').replace('+', '%2B')}/tasks/plan_shards?try_number=1"
    )
    assert "plan_shards" in task["text"] and "no-such-version" in task["text"] and task["log_url"] in task["text"]
    dag_run = posts["dag_run_failed"]["json"]
    # Airflow names the last failed task: commit, which runs on all_done (partial hours) and refuses the run
    assert dag_run["run_id"] == run.run_id and dag_run["task_id"] == "commit"
    assert dag_run["error"] == "task_failure" and dag_run["log_url"]

    assert len(smtp_sink.messages) == 2
    for recipients, message in smtp_sink.messages:
        assert sorted(recipients) == sorted(RECIPIENTS) and message["From"] == "airflow@example.com"
    subjects = sorted(m["Subject"] for _, m in smtp_sink.messages)
    assert subjects == ["[sensor_scoring] dag_run_failed: commit", "[sensor_scoring] task_failed: plan_shards"]
    body = html_of(next(m for _, m in smtp_sink.messages if "task_failed" in m["Subject"]))
    for fact in (run.run_id, "plan_shards", "no-such-version", "try_number", "map_index", "/tasks/plan_shards"):
        assert fact in body, fact

    # the deadline callback through Airflow's own triggerer code, with the context the scheduler builds for it
    # (Deadline.handle_miss: the run as the REST API shows it, and the deadline)
    from airflow.api_fastapi.core_api.datamodels.dag_run import DAGRunResponse
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(DagRun).filter(DagRun.run_id == run.run_id).one()
        shown = DAGRunResponse.model_validate(row).model_dump(mode="json")
    deadline = {"id": "test-deadline", "deadline_time": datetime(2026, 11, 24, 2, 30, tzinfo=timezone.utc)}
    assert run_deadline_callback({"dag_run": shown, "deadline": deadline}) == ["running", "success"]
    assert len(http_sink.received) == 2  # this run has failed (and said so): its deadline is no news
    # the same run while it was still going, queued before its deadline: alerted
    going = {**shown, "state": "running", "queued_at": "2026-11-24T01:00:05+00:00", "run_type": "scheduled"}
    assert run_deadline_callback({"dag_run": going, "deadline": deadline}) == ["running", "success"]
    post = http_sink.received[-1]["json"]
    assert post["event"] == "deadline_missed" and post["run_id"] == run.run_id
    assert post["dag_id"] == "sensor_scoring" and "2026-11-24 02:30:00" in post["error"]
    assert post["log_url"].endswith(f"/dags/sensor_scoring/runs/{run.run_id.replace(':', '%3A').replace('+', '%2B')}")
    assert smtp_sink.messages[-1][1]["Subject"].startswith("[sensor_scoring] deadline_missed")
    # a backfill, or a run queued after its deadline (an old hour rerun), is not alerted either
    for late in ({**going, "run_type": "backfill"}, {**going, "queued_at": "2026-11-25T09:00:00+00:00"}):
        run_deadline_callback({"dag_run": late, "deadline": deadline})
    assert len(http_sink.received) == 3 and len(smtp_sink.messages) == 3


def run_deadline_callback(context: dict) -> list[str]:
    """Run the DAG's deadline callback as the triggerer does (airflow.triggers.callback.CallbackTrigger)."""
    from airflow.triggers.callback import CallbackTrigger

    trigger = CallbackTrigger(
        callback_path="sensor_scoring_airflow.alerts.deadline_missed",
        callback_kwargs={"context": json.loads(json.dumps(context, default=str))},
    )

    async def events():
        return [event.payload async for event in trigger.run()]

    payloads = asyncio.run(events())
    # the triggerer stores the callback's return value in a text column: anything but a string crashes it
    assert all(isinstance(p.get("body"), str) for p in payloads if p["state"] == "success"), payloads
    return [p["state"] for p in payloads]


def test_not_configured_channels_are_skipped_quietly(monkeypatch, caplog, airflow_db):
    monkeypatch.delenv("AIRFLOW_CONN_SCORING_SMTP", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SCORING_ALERT_WEBHOOK", raising=False)
    caplog.set_level(logging.INFO, logger="sensor_scoring_airflow.alerts")
    payload = alerts.build_payload(
        "dag_run_failed", {"run_id": "manual__1", "reason": "task_failure"}, dag_id="sensor_scoring"
    )
    assert alerts.send_alert(payload) == {"email": "skipped", "webhook": "skipped"}
    skipped = [r for r in caplog.records if "not configured" in r.getMessage()]
    assert len(skipped) == 2 and all(r.levelno == logging.INFO for r in skipped)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unreachable_channels_are_logged_and_never_raise(monkeypatch, caplog, airflow_db):
    dead = free_port()  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_SCORING_SMTP", smtp_conn(dead))
    monkeypatch.setenv("AIRFLOW_CONN_SCORING_ALERT_WEBHOOK", webhook_conn(dead))
    caplog.set_level(logging.INFO, logger="sensor_scoring_airflow.alerts")
    notifier = alerts.ScoringAlertNotifier("dag_run_failed")
    notifier({"run_id": "manual__2", "reason": "task_failure"})  # as Airflow calls it: must not raise
    payload = alerts.build_payload("task_failed", {"run_id": "manual__2", "exception": RuntimeError("boom")})
    outcome = alerts.send_alert(payload)
    assert outcome["email"].startswith("failed: ") and outcome["webhook"].startswith("failed: ")
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 4 and all("was not delivered" in m for m in failures)


def test_anomaly_alert_only_above_the_threshold(monkeypatch, alert_connections, airflow_db):
    smtp_sink, http_sink = alert_connections
    manifests = [
        sample_manifest(START + timedelta(hours=5), anomalies=12),
        sample_manifest(START + timedelta(hours=6), anomalies=3),
    ]
    context = {"run_id": "scheduled__2026-11-24T06:00:00+00:00"}
    monkeypatch.delenv(config.ANOMALY_THRESHOLD_ENV, raising=False)
    assert alerts.check_anomalies(context, manifests) == []  # not configured: no check at all
    monkeypatch.setenv(config.ANOMALY_THRESHOLD_ENV, "5")
    [sent] = alerts.check_anomalies(context, manifests)
    assert sent["outcome"] == {"email": "sent", "webhook": "sent"}
    [post] = [p["json"] for p in http_sink.received]
    assert post["event"] == "anomalies_high" and post["hour"] == "2026-11-24T05:00:00+00:00"
    assert post["anomalies"] == 12 and post["threshold"] == 5 and "12 anomalies > threshold 5" in post["error"]
    assert len(smtp_sink.messages) == 1
    monkeypatch.setenv(config.ANOMALY_THRESHOLD_ENV, "many")
    with pytest.raises(ValueError, match="SCORING_ANOMALY_ALERT_THRESHOLD"):
        alerts.check_anomalies(context, manifests)


def test_deadline_on_the_dag_as_the_dag_processor_parses_it(airflow_db, monkeypatch):
    """The deadline is part of the serialised DAG (what the scheduler acts on), configurable by environment."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    def parsed():
        return DagBag(dag_folder=str(REPO / "dags")).dags["sensor_scoring"]

    monkeypatch.delenv(config.DEADLINE_ENV, raising=False)
    [alert] = parsed().deadline
    assert alert.interval == timedelta(hours=1, minutes=90)  # from the logical date = interval start
    assert type(alert.reference).__name__ == "DagRunLogicalDateDeadline"
    assert alert.callback.path == "sensor_scoring_airflow.alerts.deadline_missed"
    encoded = DagSerialization.to_dict(parsed())
    [stored] = encoded["dag"]["deadline"]
    assert stored["reference"] == {"reference_type": "DagRunLogicalDateDeadline"}
    assert stored["callback"]["__data__"]["path"] == "sensor_scoring_airflow.alerts.deadline_missed"
    assert DagSerialization.from_dict(encoded).deadline
    monkeypatch.setenv(config.DEADLINE_ENV, "15")
    assert parsed().deadline[0].interval == timedelta(minutes=75)
    monkeypatch.setenv(config.DEADLINE_ENV, "0")
    assert not parsed().deadline


def test_deadline_workaround_decodes_encoded_alerts_only_inside_dag_test(airflow_db):
    """apache/airflow#73428: dag.test()'s copy of the DAG holds encoded alerts; inside the workaround they are
    decoded, outside it (the scheduler's path) get_by_id is Airflow's own again."""
    from airflow.models.deadline_alert import DeadlineAlert as DeadlineAlertModel
    from airflow.serialization.serialized_objects import DagSerialization

    from dev.demo import load_dag
    from sensor_scoring_airflow.dag import deadline_alerts_decoded_in_place

    dag = load_dag(REPO / "dags" / "sensor_scoring.py")
    [encoded] = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).deadline  # what dag.test() holds
    assert isinstance(encoded, dict)
    before = DeadlineAlertModel.__dict__["get_by_id"]
    with deadline_alerts_decoded_in_place():
        alert = DeadlineAlertModel.get_by_id(encoded)
        assert alert.reference_class.__name__ == "DagRunLogicalDateDeadline" and alert.name == "hour not scored in time"
        with pytest.raises(Exception, match="No DeadlineAlert found"):  # ids still go to the table
            DeadlineAlertModel.get_by_id("01a2337c-aaec-7166-a11e-07603ca6ab89")
    assert DeadlineAlertModel.__dict__["get_by_id"] is before
    with pytest.raises(Exception, match="'dict' object has no attribute 'hex'"):  # Airflow's own takes ids only
        DeadlineAlertModel.get_by_id(encoded)


def test_failure_callbacks_fire_after_the_last_retry_only(airflow_db, monkeypatch):
    from dev.demo import load_dag

    monkeypatch.setenv(config.TASK_RETRIES_ENV, "3")
    monkeypatch.setenv(config.RETRY_DELAY_ENV, "5")
    dag = load_dag(REPO / "dags" / "sensor_scoring.py")
    for name in ("wait_for_windows", "plan_shards", "read_windows", "score_shard", "commit"):
        task = dag.task_dict[name]
        # the mapped tasks get one try more (a lost or preempted node is worth a try)
        retries = 4 if name in ("read_windows", "score_shard") else 3
        assert task.retries == retries and task.retry_delay == timedelta(seconds=5), name
        assert [type(c).__name__ for c in task.on_failure_callback] == ["ScoringAlertNotifier"]
        assert not task.on_retry_callback
    assert [c.event for c in dag.on_failure_callback] == ["dag_run_failed"]
    monkeypatch.setenv(config.TASK_RETRIES_ENV, "-1")
    with pytest.raises(ValueError, match="SCORING_TASK_RETRIES"):
        load_dag(REPO / "dags" / "sensor_scoring.py")


@pytest.mark.airflow
def test_a_bad_conf_fails_the_first_task_at_once_despite_retries(sensor_dag, alert_connections):
    """Cross-field conf errors the JSON schema cannot see fail without retries (retrying cannot fix them)."""
    smtp_sink, http_sink = alert_connections
    assert sensor_dag.task_dict["wait_for_windows"].retries >= 1
    run = sensor_dag.test(logical_date=START + H, run_conf={"window_start": "2026-11-24T01:00:00Z"})
    assert str(run.state) == "failed"
    task = next(p["json"] for p in http_sink.received if p["json"]["event"] == "task_failed")
    assert task["task_id"] == "wait_for_windows" and task["try_number"] == 1
    assert task["error"] == ("AirflowFailException: ValueError: give both window_start and window_end, or neither")


HOSTILE = "<!channel> <https://evil.example/login|Open the runbook>"


def health_manifest(hour: datetime, **changes: Any) -> HealthManifest:
    """The health of an hour of two sensors, quiet unless ``changes`` say otherwise."""
    from sensor_scoring.steps.health import HealthManifest, Thresholds

    quiet = HealthManifest(
        hour=hour,
        run_id="run-1",
        computed_at=hour + H,
        model_versions=("v1",),
        thresholds=Thresholds(psi=0.0, anomaly_excess=0.2, hours=3),
        sensors=2,
        windows=120,
        anomalies=0,
        quarantined=0,
        unattributed_quarantined=0,
        no_statistics=0,
        drifting=0,
        alerting=0,
        alerting_sensors=(),
        quarantine_reasons={},
    )
    return dataclasses.replace(quiet, **changes)


def test_names_reach_chat_and_email_as_text_not_markup(alert_connections, airflow_db):
    """A drifting sensor on a device named like a chat command: the webhook's ``text`` has ``&``, ``<``, ``>``
    escaped (no channel ping, no disguised link), the email's HTML part shows it escaped, the JSON fields keep the
    raw name for programs, and a run id with a line break stays in one subject line (no added header)."""
    smtp_sink, http_sink = alert_connections
    hour = START + 5 * H
    manifest = health_manifest(
        hour, anomalies=40, drifting=1, alerting=1, alerting_sensors=(f"{HOSTILE}/temperature & <b>humidity</b>",)
    )
    context = {"run_id": "manual__1\r\nBcc: thief@example.com", "dag": None}
    [sent] = alerts.check_drift(context, [manifest])
    assert sent["outcome"] == {"email": "sent", "webhook": "sent"}

    [post] = [p["json"] for p in http_sink.received]
    assert (
        "&lt;!channel&gt; &lt;https://evil.example/login|Open the runbook&gt;/temperature &amp; &lt;b&gt;"
        in post["text"]
    )
    assert "<" not in post["text"] and ">" not in post["text"]
    assert post["sensors"] == [f"{HOSTILE}/temperature & <b>humidity</b>"]  # the raw name, for programs

    [(recipients, message)] = smtp_sink.messages
    assert sorted(recipients) == sorted(RECIPIENTS) and message["Bcc"] is None
    assert message["Subject"] == "[None] model_drift: manual__1  Bcc: thief@example.com"
    body = html_of(message)
    assert HOSTILE not in body and "<b>humidity" not in body
    assert "&lt;!channel&gt; &lt;https://evil.example/login|Open the runbook&gt;/temperature &amp; &lt;b&gt;" in body


def test_chat_and_subject_escaping_rules():
    assert alerts.chat_text("a & <b> > c") == "a &amp; &lt;b&gt; &gt; c"
    assert alerts.chat_text(alerts.chat_text("<")) == "&amp;lt;"  # escaped once per send, shown as typed
    payload = {"dag_id": "d", "event": "task_failed", "task_id": "t\x00\n" + "x" * 300, "run_id": "r"}
    subject = alerts.email_subject(payload)
    assert len(subject) == alerts.MAX_SUBJECT and subject.endswith("...") and "\n" not in subject


def test_health_alerts_name_the_first_sensors_and_count_the_rest(alert_connections, airflow_db):
    """model_drift and models_lost: one message per hour, the sensors the manifest lists and how many more, the
    counts as fields; an hour with none sends nothing."""
    from sensor_scoring.steps.health import Thresholds

    _, http_sink = alert_connections
    hour = START + 5 * H
    psi = Thresholds(psi=0.25, anomaly_excess=0.2, hours=3)
    quiet = health_manifest(hour + H, thresholds=psi, sensors=30)
    busy = health_manifest(
        hour,
        thresholds=psi,
        sensors=30,
        drifting=5,
        alerting=5,
        alerting_sensors=("dev-1/t", "dev-2/t"),
        models_lost=2,
        models_lost_sensors=("dev-3/p", "dev-4/p"),
    )
    context = {"run_id": "r", "dag": None}
    assert [p["event"] for p in alerts.check_drift(context, [busy, quiet])] == ["model_drift"]
    assert [p["event"] for p in alerts.check_models_lost(context, [quiet, busy])] == ["models_lost"]

    drift, lost = [p["json"] for p in http_sink.received]
    assert drift["error"] == (
        f"hour {hour.isoformat()}: 5 sensor(s) drifting for 3+ consecutive hours (anomaly rate >= expected rate + "
        "0.2 and improbable at it or PSI >= 0.25): dev-1/t, dev-2/t and 3 more"
    )
    assert drift["sensors"] == ["dev-1/t", "dev-2/t"] and drift["alerting"] == 5 and drift["thresholds"]["hours"] == 3
    assert lost["error"] == (
        f"hour {hour.isoformat()}: 2 sensor(s) that had a model have none in the version scoring the hour; their "
        "windows are quarantined no_model: dev-3/p, dev-4/p. Roll back or retrain them"
    )
    assert lost["sensors"] == ["dev-3/p", "dev-4/p"] and lost["models_lost"] == 2 and lost["hour"] == hour.isoformat()
