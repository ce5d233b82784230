"""Failure, deadline and anomaly alerts: one message, sent by email (SMTP connection) and JSON webhook (HTTP
connection).

Why one path for every event: an operator reads the same fields (DAG, run, task, map index, try, error, log
link) whether a task failed after its last retry, the whole run failed, a run "succeeded" without running a task,
the run missed its deadline, or an hour found too many anomalies. Each channel is an Airflow connection; a channel
without a connection is skipped with one info line, and a channel that fails is logged and never raised: an alert
must not fail the task or run that it reports on, nor hide the original error.

Imported by the DAG file at parse time, so only the standard library, ``airflow.sdk`` and ``sensor_scoring.settings``
are imported at the top; the providers' hooks are imported when a message is sent.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

from sensor_scoring import settings as config

if TYPE_CHECKING:
    from sensor_scoring.contracts import Manifest
    from sensor_scoring.steps.health import HealthManifest, Thresholds

log = logging.getLogger(__name__)

#: Connection ids (contract with the end-to-end test and docs/operating.md).
EMAIL_CONN_ID = "scoring_smtp"
WEBHOOK_CONN_ID = "scoring_alert_webhook"
#: Events a message can carry in its ``event`` field.
EVENTS = (
    "task_failed",
    "dag_run_failed",
    "dag_run_empty",
    "deadline_missed",
    "anomalies_high",
    "partial_hour",
    "model_not_promoted",
    "model_drift",
    "models_lost",
)
PAYLOAD_KEYS = ("text", "event", "dag_id", "run_id", "task_id", "map_index", "try_number", "error", "log_url")
#: The longest email subject sent (a run id is chosen by whoever triggers the run).
MAX_SUBJECT = 200


def chat_text(text: str) -> str:
    """``text`` as chat webhooks (Slack's and Teams' ``text``) must receive it: ``&``, ``<`` and ``>`` escaped,
    the escaping Slack documents, so a name such as ``<!channel>`` or ``<https://evil.example|runbook>`` is shown
    as typed instead of pinging a channel or disguising a link. The other JSON fields stay raw, for programs."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def email_subject(payload: Mapping[str, Any]) -> str:
    """One header line: control characters (a newline would start another header) become spaces, and long
    names are cut, so a run id or task id cannot add headers or push the event out of the subject."""
    subject = f"[{payload['dag_id']}] {payload['event']}: {payload.get('task_id') or payload['run_id']}"
    subject = "".join(" " if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in subject)
    return subject if len(subject) <= MAX_SUBJECT else subject[: MAX_SUBJECT - 3] + "..."


def _text_of(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)


def build_payload(event: str, context: Mapping[str, Any], *, error: Any = None, **extra: Any) -> dict[str, Any]:
    """The alert as a JSON-ready dict: ``text`` (what chat webhooks show) plus the same facts as fields.

    Works with a task's context (``ti``, ``exception``), a DAG-run callback's context (``ti`` of the task
    that decided the run, ``reason``) and a deadline callback's context (``dag_run`` as a dict, ``deadline``).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown alert event {event!r}; one of {EVENTS}")
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    run_dict = dag_run if isinstance(dag_run, Mapping) else {}
    dag = context.get("dag")
    dag_id = (
        getattr(ti, "dag_id", None)
        or getattr(dag, "dag_id", None)
        or getattr(dag_run, "dag_id", None)
        or run_dict.get("dag_id")
    )
    run_id = (
        context.get("run_id")
        or getattr(ti, "run_id", None)
        or getattr(dag_run, "run_id", None)
        or run_dict.get("dag_run_id")
        or run_dict.get("run_id")
    )
    try:
        log_url = getattr(ti, "log_url", None) if ti is not None else None
    except Exception:  # a partly built task instance (DAG-run callback) may not know its URL
        log_url = None
    if error is None:
        error = (
            context.get("exception") if event == "task_failed" else (context.get("reason") or context.get("exception"))
        )
    payload: dict[str, Any] = {
        "event": event,
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": getattr(ti, "task_id", None),
        "map_index": getattr(ti, "map_index", None),
        "try_number": getattr(ti, "try_number", None),
        "error": _text_of(error),
        "log_url": log_url,
    }
    if event in ("dag_run_failed", "dag_run_empty") and not payload["log_url"] and dag_id and run_id:
        payload["log_url"] = run_url(str(dag_id), str(run_id))
    if event == "deadline_missed" and dag_id and run_id:
        payload["log_url"] = payload["log_url"] or run_url(str(dag_id), str(run_id))
    payload.update(extra)
    payload["text"] = _summary(payload)
    return {"text": payload.pop("text"), **payload}


def run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI (where a run-level alert points, having no single task log)."""
    from urllib.parse import quote

    try:
        from airflow.configuration import conf

        base = conf.get("api", "base_url", fallback="http://localhost:8080/")
    except Exception:
        base = "http://localhost:8080/"
    return f"{base.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id)}"


def _summary(p: Mapping[str, Any]) -> str:
    """One line a chat client shows: what happened, where, and the error."""
    what = {
        "task_failed": "task failed after its last try",
        "dag_run_failed": "DAG run failed",
        "dag_run_empty": "DAG run succeeded without running a task",
        "deadline_missed": "run missed its deadline",
        "anomalies_high": "anomaly count above threshold",
        "partial_hour": "hour committed as partial: shard(s) failed",
        "model_not_promoted": "new model version not promoted",
        "model_drift": "sensor models drifting",
        "models_lost": "sensors that had a model were not scored (no_model)",
    }[str(p["event"])]
    where = f"{p['dag_id']} / {p['run_id']}"
    if p.get("task_id"):
        where += f" / {p['task_id']}"
        if p.get("map_index") not in (None, -1):
            where += f"[{p['map_index']}]"
        if p.get("try_number") is not None:
            where += f" (try {p['try_number']})"
    text = f"[{p['event']}] {what}: {where}"
    if p.get("error"):
        text += f"\nError: {p['error']}"
    if p.get("log_url"):
        text += f"\nLog: {p['log_url']}"
    return text


def _connection(conn_id: str) -> Any | None:
    """The Airflow connection, or None when it is not defined (the channel is then skipped)."""
    from airflow.sdk import Connection

    try:
        return Connection.get(conn_id)
    except Exception as exc:  # AirflowNotFoundException, or no Airflow context at all
        log.info("Alert channel %r not configured (%s); skipped", conn_id, type(exc).__name__)
        return None


def send_email(payload: Mapping[str, Any], conn_id: str = EMAIL_CONN_ID) -> str:
    """Email through the smtp provider's hook; recipients in the connection's extra ``to``."""
    conn = _connection(conn_id)
    if conn is None:
        return "skipped"
    recipients = str((conn.extra_dejson or {}).get("to", "")).strip()
    if not recipients:
        log.warning("Connection %r has no recipients (extra 'to'); email alert skipped", conn_id)
        return "skipped"
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(to=recipients, subject=email_subject(payload), html_content=email_html(payload))
    return "sent"


def email_html(payload: Mapping[str, Any]) -> str:
    """The email's HTML part: the summary and every field, each value HTML-escaped (names are data, not markup)."""
    rows = "".join(
        f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(str(payload.get(k)))}</td></tr>"
        for k in PAYLOAD_KEYS[1:] + tuple(k for k in payload if k not in PAYLOAD_KEYS)
    )
    link = (
        f"<p><a href='{html.escape(str(payload['log_url']))}'>Open in Airflow</a></p>" if payload.get("log_url") else ""
    )
    return f"<p>{html.escape(str(payload['text'])).replace(chr(10), '<br>')}</p><table>{rows}</table>{link}"


def send_webhook(payload: Mapping[str, Any], conn_id: str = WEBHOOK_CONN_ID) -> str:
    """POST the payload as JSON through the http provider's hook; the path is the connection's extra ``endpoint``.
    Its ``text`` is escaped for chat (``chat_text``)."""
    conn = _connection(conn_id)
    if conn is None:
        return "skipped"
    from airflow.providers.http.hooks.http import HttpHook

    endpoint = (conn.extra_dejson or {}).get("endpoint")
    HttpHook(method="POST", http_conn_id=conn_id).run(
        endpoint=endpoint,
        data=json.dumps({**payload, "text": chat_text(str(payload["text"]))}, default=str),
        headers={"Content-Type": "application/json"},
        extra_options={"timeout": 10},
    )
    return "sent"


def send_alert(payload: Mapping[str, Any]) -> dict[str, str]:
    """Send on every configured channel. Never raises: a failing channel is logged and reported as failed."""
    outcome = {}
    for name, send in (("email", send_email), ("webhook", send_webhook)):
        try:
            outcome[name] = send(payload)
        except Exception as exc:
            log.warning(
                "Alert by %s failed (%s: %s); the %s alert for %s / %s was not delivered",
                name,
                type(exc).__name__,
                exc,
                payload.get("event"),
                payload.get("dag_id"),
                payload.get("run_id"),
            )
            outcome[name] = f"failed: {type(exc).__name__}"
    log.info("Alert %s: %s", payload.get("event"), outcome)
    return outcome


class ScoringAlertNotifier(BaseNotifier):
    """An Airflow notifier for ``on_failure_callback`` of tasks (``task_failed``) and of the DAG (``dag_run_failed``).

    As a task's ``on_failure_callback`` it runs only when the task has failed for good: retries go to
    ``on_retry_callback``, which this project leaves empty.
    """

    template_fields = ()

    def __init__(self, event: str = "task_failed") -> None:
        super().__init__()
        if event not in EVENTS:
            raise ValueError(f"unknown alert event {event!r}; one of {EVENTS}")
        self.event = event

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render. (BaseNotifier would build a Jinja environment from ``context["dag"]``, which for a
        DAG-run callback under ``dag.test`` is a SerializedDAG without one, and the alert would be lost.)"""

    def notify(self, context: Any) -> None:
        if getattr(context.get("exception"), "alerted_upstream", False):
            # e.g. commit refusing an hour whose shard failed: that shard's own alert already said so
            log.info("No %s alert: %s", self.event, context.get("exception"))
            return
        try:
            send_alert(build_payload(self.event, context))
        except Exception as exc:  # building the message failed: say so, never mask the original failure
            log.warning("Could not build the %s alert: %s: %s", self.event, type(exc).__name__, exc)


class EmptyRunNotifier(ScoringAlertNotifier):
    """The DAG's ``on_success_callback``: silent for a run in which a task succeeded; for a run that "succeeded"
    without any, a ``dag_run_empty`` alert (and a warning in the log), since that run scored nothing.

    Airflow creates no task instance for a run whose logical date is before the DAG's start date, and marks such
    a run successful at once. ``airflow dags test`` and ``airflow dags trigger`` refuse those logical dates
    (``ScoringDAG.test``; ``default_args["start_date"]``), but a run triggered from the UI or REST API with one
    is created anyway: this is how its operator hears of it. Airflow hands a DAG success callback the last task
    that succeeded (``ti``); a run without one had no task to run.
    """

    def __init__(self) -> None:
        super().__init__("dag_run_empty")

    def notify(self, context: Any) -> None:
        if context.get("ti") is not None or context.get("task_instance") is not None:
            return  # the normal case: tasks ran and succeeded
        dag = context.get("dag")
        start = getattr(dag, "start_date", None)
        error = (
            f"no task ran, nothing was scored. Airflow creates no task for a run whose logical date is before "
            f"the DAG's start date ({start.isoformat() if start else 'unknown'}, {config.START_DATE_ENV}): set "
            f"{config.START_DATE_ENV} to the first hour to score (where the DAG is parsed) and trigger again"
        )
        log.warning("DAG run %s succeeded without running a task: %s", context.get("run_id"), error)
        try:
            send_alert(build_payload(self.event, context, error=error))
        except Exception as exc:
            log.warning("Could not build the %s alert: %s: %s", self.event, type(exc).__name__, exc)


async def deadline_missed(context: Mapping[str, Any] | None = None, **kwargs: Any) -> str:
    """Deadline-alert callback (``AsyncCallback``, runs in the triggerer): the run has not finished in time.

    The triggerer passes a small context: ``dag_run`` (the REST API's DAG-run fields) and ``deadline``.
    Sending is blocking I/O, so it runs in a thread rather than stalling the triggerer's event loop. Returns
    a short text: the triggerer stores the return value in a text column, and in Airflow 3.3.2 a dict there
    crashes the triggerer (seen with a live scheduler and triggerer).
    """
    context = dict(context or {})
    deadline = context.get("deadline") or {}
    run = context.get("dag_run") or {}
    actionable, why = deadline_is_actionable(run, deadline)
    if not actionable:
        log.info("Deadline of %s / %s passed, no alert: %s", run.get("dag_id"), run.get("dag_run_id"), why)
        return f"no alert: {why}"
    error = (
        f"not finished by {deadline.get('deadline_time')} (state {run.get('state')}, "
        f"data interval {run.get('data_interval_start')} .. {run.get('data_interval_end')})"
    )
    try:
        payload = build_payload("deadline_missed", context, error=error, **kwargs)
    except Exception as exc:
        log.warning("Could not build the deadline alert: %s: %s", type(exc).__name__, exc)
        return f"alert not built: {type(exc).__name__}"
    outcome = await asyncio.to_thread(send_alert, payload)
    return ", ".join(f"{channel} {result}" for channel, result in outcome.items())


def deadline_is_actionable(run: Mapping[str, Any], deadline: Mapping[str, Any]) -> tuple[bool, str]:
    """Is a missed deadline news? Not for a run that already ended (a failed run alerted by itself; Airflow
    may still fire its deadline, apache/airflow#60927), nor for a run queued after its deadline had passed
    (a backfill or rerun of an old hour: nobody waits for it by the clock)."""
    from datetime import datetime

    state = str(run.get("state") or "").lower()
    if state in ("success", "failed"):
        return False, f"the run has already ended ({state})"
    if str(run.get("run_type") or "").lower() == "backfill":
        return False, "a backfill run of a past hour"
    try:
        due = datetime.fromisoformat(str(deadline["deadline_time"]).replace("Z", "+00:00"))
        queued = datetime.fromisoformat(str(run["queued_at"]).replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError):
        return True, "deadline or queue time unknown"
    if queued >= due:
        return False, f"queued at {queued.isoformat()}, after its deadline {due.isoformat()}"
    return True, "missed"


def anomaly_threshold() -> int | None:
    """``SCORING_ANOMALY_ALERT_THRESHOLD`` (anomalies per hour), or None when the check is off. Read when the
    check runs, not at parse time: a deployment can change it without the DAG being parsed again."""
    return config.current().anomaly_alert_threshold


def check_anomalies(
    context: Mapping[str, Any], manifests: Sequence[Manifest], threshold: int | None = None
) -> list[dict[str, Any]]:
    """After commit: one ``anomalies_high`` alert per committed hour whose anomaly count exceeds the threshold."""
    threshold = anomaly_threshold() if threshold is None else threshold
    if threshold is None:
        log.debug("%s not set: no anomaly-count alert", config.ANOMALY_THRESHOLD_ENV)
        return []
    sent = []
    for manifest in manifests:
        anomalies, hour = manifest.counts.anomalies, manifest.hour.isoformat()
        if anomalies > threshold:
            payload = build_payload(
                "anomalies_high",
                context,
                error=f"hour {hour}: {anomalies} anomalies > threshold {threshold}",
                hour=hour,
                anomalies=anomalies,
                threshold=threshold,
            )
            payload["outcome"] = send_alert(payload)
            sent.append(payload)
    return sent


def check_drift(context: Mapping[str, Any], manifests: Sequence[HealthManifest]) -> list[dict[str, Any]]:
    """After model_health: one ``model_drift`` alert per hour with sensors drifting for the configured number of
    consecutive hours, listing them (one message per hour, however many sensors: the manifest names the first
    ``steps.health.MAX_LISTED``; the hour's health partition has them all)."""
    return [
        _sensors_alert(
            "model_drift",
            context,
            manifest,
            manifest.alerting_sensors,
            manifest.alerting,
            _drifting(manifest.thresholds),
            alerting=manifest.alerting,
            thresholds=manifest.thresholds.to_dict(),
        )
        for manifest in manifests
        if manifest.alerting
    ]


def _drifting(t: Thresholds) -> str:
    """What the drifting sensors did for ``t.hours`` hours in a row, in the drift rule's terms."""
    psi = f" or PSI >= {t.psi:g}" if t.psi > 0 else ""
    return (
        f"drifting for {t.hours}+ consecutive hours (anomaly rate >= expected rate + {t.anomaly_excess:g} "
        f"and improbable at it{psi})"
    )


def check_models_lost(context: Mapping[str, Any], manifests: Sequence[HealthManifest]) -> list[dict[str, Any]]:
    """After model_health: one ``models_lost`` alert per hour in which sensors that had a model (the hour before,
    the day before, or in the production version before this one) were quarantined ``no_model``."""
    what = "that had a model have none in the version scoring the hour; their windows are quarantined no_model"
    return [
        _sensors_alert(
            "models_lost",
            context,
            manifest,
            manifest.models_lost_sensors,
            manifest.models_lost,
            what,
            then=". Roll back or retrain them",
            models_lost=manifest.models_lost,
        )
        for manifest in manifests
        if manifest.models_lost
    ]


def _sensors_alert(
    event: str,
    context: Mapping[str, Any],
    manifest: HealthManifest,
    listed: Sequence[str],
    count: int,
    what: str,
    *,
    then: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """The one shape of an hour's alert about some of its sensors, sent: ``hour H: N sensor(s) <what>: a, b and M
    more<then>`` (the health manifest lists the first ``steps.health.MAX_LISTED`` of the ``count``), with the
    hour, the listed sensors and ``extra`` as fields."""
    hour = manifest.hour.isoformat()
    more = count - len(listed)
    names = ", ".join(listed) + (f" and {more} more" if more > 0 else "")
    payload = build_payload(
        event,
        context,
        error=f"hour {hour}: {count} sensor(s) {what}: {names}{then}",
        hour=hour,
        sensors=list(listed),
        **extra,
    )
    payload["outcome"] = send_alert(payload)
    return payload
