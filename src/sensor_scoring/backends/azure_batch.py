"""Azure Batch for shards: ids, the shared autoscaling pool, one job per DAG run, one task per shard, and the
one way of submitting a shard's task, waiting for it and judging it.

Airflow-free on purpose: the deferrable ``ShardOperator`` and its ``BatchTaskTrigger``
(``sensor_scoring_airflow``) and :class:`AzureBatchBackend` (scripts, the contract tests) call the same
:func:`submit_shard`, :func:`poll_step` and :func:`check_outcome`, and name jobs by the same :func:`job_id`;
the trigger awaits between polls in the triggerer's event loop, the backend sleeps. Every call goes through the
azure-batch 15 SDK (``azure.batch.BatchClient``). Inside Airflow the client comes from the provider's
``AzureBatchHook`` (``sensor_scoring_airflow.batch``: shared key, or Entra ID through ``DefaultAzureCredential``);
outside Airflow from :func:`batch_client` with an ``azure-identity`` credential or the account's shared key. The
contract tests drive it against a fake Batch REST server.

A shard's task never gets the storage account key: with a pool identity
(``SCORING_BATCH_POOL_IDENTITY_CLIENT_ID``) it gets only the account URL and authenticates as that identity;
otherwise container SAS URLs (signed with a user delegation key when Airflow's storage is token-authenticated).

What the stock ``AzureBatchOperator`` gets wrong for mapped tasks, and this module does not: it never waits for
the pool (or its nodes) to be idle, it adds one task to a job shared by the run instead of a job per call, and it
judges a shard by its own task's exit code only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sensor_scoring import settings as config, storage as st
from sensor_scoring.backends import SHARD_STEPS, ShardFailed, read_result, shard_command
from sensor_scoring.settings import DEFAULT_FORMULA, FORMULA_ENV, BatchSettings

if TYPE_CHECKING:
    from azure.batch import BatchClient, models as bm
    from azure.core.credentials import AzureNamedKeyCredential, TokenCredential

log = logging.getLogger(__name__)

#: Batch ids: letters, digits, hyphens and underscores, at most 64 characters.
MAX_ID = 64
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]+")


class Log(Protocol):
    """Where the wait and the verdict are told: this module's logger, or the operator's or trigger's own
    (Airflow files those under the task's log)."""

    def info(self, msg: str, /, *args: object) -> None: ...

    def warning(self, msg: str, /, *args: object) -> None: ...

    def error(self, msg: str, /, *args: object) -> None: ...


# --- ids -------------------------------------------------------------------------------------------------


def _bounded_id(readable: str, unique_source: str, limit: int = MAX_ID) -> str:
    """A valid Batch id: the readable part cleaned and cut, plus a hash of the full source (no collisions)."""
    digest = hashlib.sha256(unique_source.encode()).hexdigest()[:10]
    slug = _NOT_ID.sub("-", readable).strip("-_")[: limit - len(digest) - 1]
    return f"{slug}-{digest}"


def job_prefix(dag_id: str) -> str:
    """The start of every job id of one DAG: how the sweep of idle jobs finds its own and nobody else's."""
    return _NOT_ID.sub("-", dag_id).strip("-_")[:24] + "-"


def job_id(dag_id: str, run_id: str) -> str:
    """The one naming of jobs: one job per DAG run; the same run always maps to the same job, so a retry (and
    the resumed operator) finds it again. Outside Airflow the caller names its run the same way."""
    prefix = job_prefix(dag_id)
    return prefix + _bounded_id(run_id, f"{dag_id}\n{run_id}", MAX_ID - len(prefix))


def task_id(facts: ShardFacts, try_number: int) -> str:
    """One task per shard and try, named by its command first (``read-windows-00003-…``, ``score-shard-00003-…``,
    ``train-shard-00003-…``): a run's read groups and shards share one job and their numbers overlap, so the
    portal must tell read group 3 from score shard 3. ``facts.version`` changes whenever plan_shards rewrites the
    spec, so a re-planned run never reuses the output of an older plan; the try suffix lets a retry add a fresh
    task while the failed one is still being deleted (Batch refuses a second task with the same id)."""
    version = hashlib.sha256(facts.version.encode()).hexdigest()[:8]
    task = f"{facts.command}-{int(facts.shard):05d}-{version}-t{int(try_number)}"
    if len(task) > MAX_ID or _NOT_ID.search(task):
        raise ValueError(f"Batch task id {task!r} breaks Batch's id rules (letters, digits, - and _, at most {MAX_ID})")
    return task


def previous_task_ids(facts: ShardFacts, try_number: int) -> list[str]:
    """Ids earlier tries of this shard used, newest first."""
    return [task_id(facts, t) for t in range(int(try_number) - 1, 0, -1)]


# --- pool, job, task --------------------------------------------------------------------------------------


def autoscale_formula(settings: BatchSettings) -> str:
    """The formula of ``sensor_scoring/backends/autoscale.formula`` with the caps filled in (comment lines dropped)."""
    path = Path(settings.formula_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"autoscale formula {path} not found; set {FORMULA_ENV} to its path "
            f"(the package's own is {DEFAULT_FORMULA})"
        )
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("//")]
    text = "\n".join(lines)
    text = text.replace("@MAX_DEDICATED@", str(int(settings.max_nodes)))
    return text.replace("@MAX_LOW_PRIORITY@", str(int(settings.max_low_priority_nodes)))


def pool_options(settings: BatchSettings) -> bm.BatchPoolCreateOptions:
    """The pool, as created when missing: autoscaled from zero, container-enabled for the scorer image."""
    from azure.batch import models as bm

    publisher, offer, sku, version = (settings.node_image.split(":") + ["latest"])[:4]
    return bm.BatchPoolCreateOptions(
        id=settings.pool_id,
        vm_size=settings.vm_size,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(publisher=publisher, offer=offer, sku=sku, version=version),
            node_agent_sku_id=settings.node_agent_sku,
            container_configuration=bm.BatchContainerConfiguration(
                type="dockerCompatible", container_image_names=[settings.scorer_image]
            ),
        ),
        enable_auto_scale=True,
        auto_scale_formula=autoscale_formula(settings),
        auto_scale_evaluation_interval=timedelta(minutes=5),
        task_slots_per_node=settings.task_slots_per_node,
    )


def ensure_pool(client: BatchClient, settings: BatchSettings) -> bool:
    """Create the shared pool if it does not exist; True if this call created it. Never waits for nodes:
    the autoscale formula grows the pool once tasks are queued.

    A pool with a managed identity (``settings.pool_identity_client_id``) is never created here: the Batch service
    API cannot attach an identity (only Azure Resource Manager can), so a pool made here would leave every task
    without storage access. It must exist and carry that identity, else a ``RuntimeError`` says what to do.
    """
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    if settings.pool_identity_client_id:
        check_pool_identity(client, settings)
        return False
    try:
        # azure-batch 15.1's error policy raises on the 404 of a missing pool before pool_exists can say False
        if client.pool_exists(settings.pool_id):
            return False
    except ResourceNotFoundError:
        pass
    try:
        client.create_pool(pool_options(settings))
    except ResourceExistsError:  # another shard of the same hour created it first
        return False
    log.info(
        "Created Batch pool %s (%s, autoscale up to %d dedicated + %d low-priority nodes)",
        settings.pool_id,
        settings.vm_size,
        settings.max_nodes,
        settings.max_low_priority_nodes,
    )
    return True


def check_pool_identity(client: BatchClient, settings: BatchSettings) -> None:
    """The pool exists and has the user-assigned identity ``pool_identity_client_id`` (tasks reach storage as it)."""
    from azure.core.exceptions import ResourceNotFoundError

    wanted = settings.pool_identity_client_id
    try:
        pool = client.get_pool(settings.pool_id)
    except ResourceNotFoundError:
        raise RuntimeError(
            f"Batch pool {settings.pool_id} does not exist; with SCORING_BATCH_POOL_IDENTITY_CLIENT_ID set the pool "
            "must be created through Azure Resource Manager with that user-assigned identity (docs/deploy-azure.md), "
            "since the Batch service API cannot attach one"
        ) from None
    identities = getattr(pool.identity, "user_assigned_identities", None) or []
    if not any((i.client_id or "").lower() == wanted.lower() for i in identities):
        found = ", ".join(i.client_id or i.resource_id for i in identities) or "none"
        raise RuntimeError(
            f"Batch pool {settings.pool_id} does not carry the user-assigned identity {wanted} "
            f"(SCORING_BATCH_POOL_IDENTITY_CLIENT_ID); its identities: {found}. Its tasks could not reach storage"
        )


def ensure_job(client: BatchClient, settings: BatchSettings, job: str, *, display_name: str = "") -> bool:
    """Create the run's job if missing (idempotent: mapped shards and retries race to create it); True if
    this call created it. A job already completed (terminated by :func:`finish_idle_jobs` after a day, or by
    hand) is deleted and created again, so an old run can still be cleared and re-run on Batch."""
    from azure.batch import models as bm
    from azure.core.exceptions import ResourceExistsError

    options = bm.BatchJobCreateOptions(
        id=job,
        display_name=display_name[:1024] or None,
        pool_info=bm.BatchPoolInfo(pool_id=settings.pool_id),
        # the job stays open: shards of a run are added at different times, so "terminate when all
        # tasks complete" could close it between two shards
        all_tasks_complete_mode="noaction",
    )
    try:
        client.create_job(options)
        log.info("Created Batch job %s on pool %s", job, settings.pool_id)
        return True
    except ResourceExistsError:
        pass
    state = _enum_text(client.get_job(job).state)
    if state == "active":
        return False
    if state != "completed":
        raise RuntimeError(f"Batch job {job} is {state}: no task can be added to it now; retry later")
    log.info("Batch job %s is completed: deleting and re-creating it for this re-run", job)
    client.begin_delete_job(job, polling_interval=2).result()
    try:
        client.create_job(options)
    except ResourceExistsError:  # another shard re-created it meanwhile
        pass
    return True


def finish_idle_jobs(
    client: BatchClient, prefix: str, older_than: timedelta, *, now: datetime | None = None
) -> list[str]:
    """Terminate this DAG's jobs created more than ``older_than`` ago that have no active or running task.

    Jobs are left open while their run may add shards (see ensure_job), yet every active job counts toward
    the Batch account's active-jobs quota; each new run's job creation sweeps the old ones.
    """
    from azure.core.exceptions import HttpResponseError

    cutoff = (now or datetime.now(timezone.utc)) - older_than
    finished = []
    for job in client.list_jobs(select=["id", "state", "creationTime"]):
        if not job.id.startswith(prefix) or _enum_text(job.state) != "active" or not job.creation_time:
            continue
        if job.creation_time > cutoff:
            continue
        counts = client.get_job_task_counts(job.id).task_counts
        if counts.active or counts.running:
            continue
        try:
            # options are required in practice: azure-batch 15.1 fails to build the request without a body;
            # its options model is private, so the REST body goes as a mapping
            body: Any = {"terminateReason": "IdleAfterRun"}
            client.begin_terminate_job(job.id, body, polling_interval=2)
            finished.append(job.id)
        except HttpResponseError as exc:
            log.info("Could not terminate Batch job %s: %s", job.id, exc.message)
    if finished:
        log.info("Terminated %d idle Batch job(s) older than %s: %s", len(finished), older_than, ", ".join(finished))
    return finished


# --- what a shard's task gets: command, environment, options ----------------------------------------------


@dataclass(frozen=True)
class ShardFacts:
    """What submitting a shard needs: the ``command`` it runs (a key of ``backends.SHARD_STEPS``), and from its
    spec its number (a read task's: its group's), the containers it touches, and a version of the spec that
    changes whenever plan_shards rewrites it (its URI and last-modified time). :func:`task_id` derives from them."""

    command: str
    shard: int
    containers: dict[str, str]
    version: str


def shard_facts(storage: st.Storage, spec_uri: str, command: str) -> ShardFacts:
    """The :class:`ShardFacts` of the spec at ``spec_uri``, run as ``command``."""
    if command not in SHARD_STEPS:
        raise ValueError(f"unknown shard command {command!r}; one of {sorted(SHARD_STEPS)}")
    container, path = st.parse_uri(spec_uri)
    spec = json.loads(storage.read_bytes(container, path))
    [info] = [b for b in storage.list(container, path) if b.name == path]
    number = spec["shard"] if "shard" in spec else spec["group"]  # a read task's spec numbers its group
    return ShardFacts(command, int(number), dict(spec["containers"]), f"{spec_uri}@{info.last_modified.isoformat()}")


def batch_task_env(
    storage_setting: str,
    containers: Mapping[str, str],
    sas_hours: float,
    settings: config.Settings | None = None,
    *,
    pool_identity_client_id: str = "",
) -> dict[str, str]:
    """The whole storage access of a Batch task, never a key.

    With ``pool_identity_client_id`` (the pool's user-assigned managed identity): the storage account URL and the
    identity's client id (``AZURE_CLIENT_ID``, which ``DefaultAzureCredential`` and ``ManagedIdentityCredential``
    read), no secret at all. Otherwise SAS URLs to read ``models`` (a read task: ``windows``) and read+write
    ``staging``, expiring after ``sas_hours``, made by :func:`sensor_scoring.storage.make_sas_setting` (signed
    with a user delegation key when the storage is token-authenticated). A storage retry budget other than the
    default is forwarded, so a node
    rides out an outage as the worker would (the default is the node's too)."""
    settings = settings or config.current()
    if pool_identity_client_id:
        env = {config.STORAGE_ENV: storage_account_url(storage_setting), AZURE_CLIENT_ID_ENV: pool_identity_client_id}
    else:
        sas = st.make_sas_setting(
            storage_setting,
            read=[c for k, c in containers.items() if k != "staging"],
            read_write=[containers["staging"]],
            hours=sas_hours,
        )
        env = {config.STORAGE_ENV: sas}
    defaults = config.Settings()
    if settings.storage_retries != defaults.storage_retries:
        env[config.STORAGE_RETRIES_ENV] = str(settings.storage_retries)
    if settings.storage_retry_backoff_s != defaults.storage_retry_backoff_s:
        env[config.STORAGE_RETRY_BACKOFF_ENV] = str(settings.storage_retry_backoff_s)
    return env


#: What azure-identity's credentials read as the client id of a user-assigned managed identity.
AZURE_CLIENT_ID_ENV = "AZURE_CLIENT_ID"
#: The setting naming the pool's user-assigned identity (:attr:`BatchSettings.pool_identity_client_id`).
POOL_IDENTITY_ENV = "SCORING_BATCH_POOL_IDENTITY_CLIENT_ID"


def storage_account_url(storage_setting: str) -> str:
    """The storage account's blob endpoint behind a storage setting, for a task that authenticates as the pool's
    identity: the storage package's :func:`sensor_scoring.storage.account_url` of an account URL (the dfs endpoint
    gives the blob one) or of a connection string's blob endpoint, with its refusals (https only, the account and
    nothing else). A SAS setting or a local folder names no account the identity could reach. Every refusal is a
    ``ValueError`` that names the setting's form, never its value (it may hold a key or a SAS)."""
    setting = st.parse_setting(storage_setting)
    if setting.kind == "account_url":
        return setting.value
    if setting.kind != "connection_string":
        form = "a SAS setting" if setting.kind == "sas" else "a local folder"
        raise ValueError(
            f"{POOL_IDENTITY_ENV} is set, so Batch tasks authenticate to the storage account as the pool's identity, "
            f"but the storage setting is {form}, which names no storage account: give Airflow's storage as the "
            "account URL (https://<account>.blob.core.windows.net) or a connection string"
        )
    from azure.storage.blob import BlobServiceClient

    endpoint = str(BlobServiceClient.from_connection_string(setting.value).url).partition("?")[0]
    try:
        return st.account_url(endpoint)
    except st.AccountUrlError as exc:
        raise ValueError(
            f"{POOL_IDENTITY_ENV} is set, but the blob endpoint of the storage connection string is no account "
            f"URL a pool identity can use: {exc}"
        ) from None


def shard_command_line(spec_uri: str, command: str = "score-shard") -> str:
    """The task's command line: the same entry point as the local backend, quoted for Batch's shell-less exec."""
    return shlex.join(shard_command(spec_uri, python="python", command=command))


def task_options(
    settings: BatchSettings,
    task: str,
    spec_uri: str,
    task_env: Mapping[str, str],
    *,
    max_wall_clock: timedelta | None = None,
    display_name: str = "",
    command: str = "score-shard",
) -> bm.BatchTaskCreateOptions:
    """The Batch task of one shard. Storage reaches it only through ``task_env`` (:func:`batch_task_env`: the pool
    identity's account URL, or SAS URLs; never a key)."""
    from azure.batch import models as bm

    return bm.BatchTaskCreateOptions(
        id=task,
        display_name=display_name[:1024] or None,
        command_line=shard_command_line(spec_uri, command),
        container_settings=bm.BatchTaskContainerSettings(
            image_name=settings.scorer_image, container_run_options=settings.container_run_options
        ),
        environment_settings=[bm.EnvironmentSetting(name=k, value=v) for k, v in sorted(task_env.items())],
        constraints=bm.BatchTaskConstraints(
            max_wall_clock_time=max_wall_clock,
            # Batch's own retries would hide a failure from Airflow, which owns retries (with reuse rules below)
            max_task_retry_count=0,
            retention_time=timedelta(days=2),
        ),
        user_identity=bm.UserIdentity(auto_user=bm.AutoUserSpecification(scope="task", elevation_level="nonadmin")),
    )


# --- submit ------------------------------------------------------------------------------------------------


@dataclass
class Submission:
    """What submit_shard did: the ids, and whether an earlier try's successful task was reused."""

    job_id: str
    task_id: str
    reused: bool = False
    replaced: list[str] = field(default_factory=list)


def submit_shard(
    client: BatchClient,
    settings: BatchSettings,
    storage_setting: str,
    spec_uri: str,
    *,
    dag_id: str,
    run_id: str,
    try_number: int,
    max_wall_clock: timedelta | None = None,
    label: str = "",
    command: str = "score-shard",
) -> Submission:
    """The one submission of a shard's Batch task (the operator's and :class:`AzureBatchBackend`'s): adds this
    try's task for the shard of ``spec_uri`` to the run's job :func:`job_id` ``(dag_id, run_id)``, after looking at
    what earlier tries left in it.

    - an earlier try's task that completed with exit code 0: reused, nothing is added (its outputs are there);
    - an earlier try's task that failed, or is still running (the try was cleared or its worker died):
      terminated, deleted and replaced by this try's task;
    - this try's own task already present (the worker died right after adding it): adopted.

    The task reaches storage as :func:`batch_task_env` says (pool identity or SAS URLs, never a key). The call
    that creates the run's job also terminates the DAG's idle jobs (:func:`job_prefix`) older than
    ``settings.job_ttl_hours``.
    """
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    facts = shard_facts(st.open_storage(storage_setting), spec_uri, command)
    ensure_pool(client, settings)
    job = job_id(dag_id, run_id)
    if ensure_job(client, settings, job, display_name=f"{dag_id} run {run_id}"):
        finish_idle_jobs(client, job_prefix(dag_id), timedelta(hours=settings.job_ttl_hours))
    replaced: list[str] = []
    for earlier in previous_task_ids(facts, try_number):
        try:
            found = client.get_task(job, earlier)
        except ResourceNotFoundError:
            continue
        info = task_summary(found)
        if info["state"] == "completed" and info["exit_code"] == 0:
            log.info("Reusing Batch task %s of an earlier try: it completed with exit code 0", earlier)
            return Submission(job, earlier, reused=True)
        if info["state"] != "completed":
            log.info("Terminating Batch task %s of an earlier try (still %s)", earlier, info["state"])
            terminate_task(client, job, earlier)
        log.info("Deleting Batch task %s of an earlier try (exit code %s)", earlier, info["exit_code"])
        try:
            client.delete_task(job, earlier)
        except ResourceNotFoundError:
            pass
        replaced.append(earlier)
    this = task_id(facts, try_number)
    task_env = batch_task_env(
        storage_setting, facts.containers, settings.sas_hours, pool_identity_client_id=settings.pool_identity_client_id
    )
    try:
        client.create_task(
            job,
            task_options(
                settings, this, spec_uri, task_env, max_wall_clock=max_wall_clock, display_name=label, command=command
            ),
        )
        log.info("Added Batch task %s to job %s: %s", this, job, shard_command_line(spec_uri, command))
    except ResourceExistsError:
        log.info("Batch task %s already exists (added before this try was interrupted): adopting it", this)
    return Submission(job, this, replaced=replaced)


# --- wait and judge ----------------------------------------------------------------------------------------


def _enum_text(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def task_summary(task: Any) -> dict[str, Any]:
    """The few facts of a Batch task the backend acts on, as plain JSON (for trigger events and logs)."""
    info = task.execution_info
    failure = getattr(info, "failure_info", None) if info else None
    node = task.node_info
    return {
        "task_id": task.id,
        "state": _enum_text(task.state),
        "exit_code": getattr(info, "exit_code", None) if info else None,
        "result": _enum_text(getattr(info, "result", None)) if info else None,
        "requeue_count": getattr(info, "requeue_count", 0) if info else 0,
        "start_time": info.start_time.isoformat() if info and info.start_time else None,
        "end_time": info.end_time.isoformat() if info and info.end_time else None,
        "failure": None
        if failure is None
        else {"category": _enum_text(failure.category), "code": failure.code, "message": failure.message},
        "node_id": getattr(node, "node_id", None) if node else None,
        "task_root_url": getattr(node, "task_root_directory_url", None) if node else None,
    }


@dataclass
class Poll:
    """One wait on a Batch task: the next pause (doubling up to ``max_delay``), the requeues seen so far, and
    the ``deadline`` (epoch seconds) at which the task is terminated instead of waited for."""

    job_id: str
    task_id: str
    delay: float
    max_delay: float
    deadline: float | None = None
    requeues: int = 0


@dataclass(frozen=True)
class PollStep:
    """What to do after one look at the task: the wait is over with ``event`` (after terminating the task if
    ``terminate``), or look again after ``sleep_s``."""

    event: dict[str, Any] | None = None
    terminate: bool = False
    sleep_s: float = 0.0


def poll_step(poll: Poll, summary: Mapping[str, Any], *, now: float, log: Log = log) -> PollStep:
    """Every decision of a wait on a Batch task, for the trigger's async loop and the backend's sync one alike.

    The event of a finished wait is ``{"status": "completed", **summary}`` when the task completed (whatever its
    exit code: :func:`check_outcome` judges it), or ``{"status": "timeout", **summary}`` (``state`` is what the
    task still was) when it outlived the deadline, and must be terminated.
    """
    if summary["requeue_count"] > poll.requeues:
        poll.requeues = summary["requeue_count"]
        log.warning(
            "Batch task %s was requeued by Batch (node preempted or lost), %d time(s); waiting for it to run again",
            poll.task_id,
            poll.requeues,
        )
    if summary["state"] == "completed":
        return PollStep(event={"status": "completed", **summary})
    if poll.deadline is not None and now > poll.deadline:
        log.warning("Batch task %s still %s at its deadline: terminating it", poll.task_id, summary["state"])
        return PollStep(event={"status": "timeout", **summary}, terminate=True)
    log.info("Batch task %s/%s is %s; next check in %.1fs", poll.job_id, poll.task_id, summary["state"], poll.delay)
    pause = poll.delay if poll.deadline is None else max(0.0, min(poll.delay, poll.deadline - now + 0.01))
    poll.delay = min(poll.delay * 2, poll.max_delay)
    return PollStep(sleep_s=pause)


def check_outcome(
    client: BatchClient, job: str, event: Mapping[str, Any], *, account_url: str | None = None, log: Log = log
) -> None:
    """Log what a finished wait found; raise ShardFailed unless the task completed with exit code 0 (its own
    code, not the job's). A failed task's output tails go to the log, stderr's last lines into the error."""
    task = event["task_id"]
    urls = output_file_urls(account_url, job, task) if account_url else {}
    log.info(
        "Batch task %s/%s: state %s, exit code %s, requeued %s time(s), ran %s .. %s on node %s. stdout: %s stderr: %s",
        job,
        task,
        event["state"],
        event["exit_code"],
        event["requeue_count"],
        event["start_time"],
        event["end_time"],
        event["node_id"],
        urls.get("stdout", "?"),
        urls.get("stderr", "?"),
    )
    if event["status"] == "completed" and event["exit_code"] == 0:
        return
    tails = {name: read_task_file_tail(client, job, task, name) for name in ("stdout.txt", "stderr.txt")}
    for name, tail in tails.items():
        if tail:
            log.error("Tail of %s of Batch task %s:\n%s", name, task, tail)
    if event["status"] == "timeout":
        raise ShardFailed(f"Batch task {task} did not finish in time (was {event['state']}); it was terminated")
    last = tails["stderr.txt"].splitlines()[-5:]
    raise ShardFailed(
        f"Batch task {task} exited with code {event['exit_code']} (failure: {event['failure']})"
        + (": " + " | ".join(last) if last else "")
    )


def terminate_task(client: BatchClient, job: str, task: str) -> bool:
    """Ask Batch to end a task; True if the request was made (a finished or deleted task is fine)."""
    from azure.core.exceptions import HttpResponseError

    try:
        client.terminate_task(job, task)
        return True
    except HttpResponseError as exc:  # 404, 409 TaskCompleted and the like: nothing left to stop
        log.info("Terminate of Batch task %s/%s refused: %s", job, task, exc.message)
        return False


def output_file_urls(account_url: str, job: str, task: str) -> dict[str, str]:
    """The Batch REST URLs of a task's stdout and stderr (readable with the Batch account's credentials,
    ``az batch task file download``, or the portal; they stay until the task's retention time ends)."""
    base = account_url.rstrip("/")
    return {name: f"{base}/jobs/{job}/tasks/{task}/files/{name}.txt" for name in ("stdout", "stderr")}


def read_task_file_tail(client: BatchClient, job: str, task: str, name: str, lines: int = 20) -> str:
    """The last lines of a task's output file, for the log of a failed shard; '' if unreadable."""
    try:
        data = b"".join(client.download_task_file(job, task, name))
    except Exception as exc:  # the node may be gone: the log then points at the URL instead
        log.info("Could not read %s of Batch task %s/%s: %s", name, job, task, exc)
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


# --- clients ---------------------------------------------------------------------------------------------

#: The Entra ID scope of the Batch service (what azure-batch asks a token credential for).
BATCH_SCOPE = "https://batch.core.windows.net//.default"


def batch_client(account_url: str, credential: TokenCredential | AzureNamedKeyCredential | None = None) -> BatchClient:
    """A BatchClient outside Airflow: Entra ID with ``credential`` (default azure-identity's
    ``DefaultAzureCredential``: managed identity, workload identity, an environment service principal, the Azure
    CLI), or the account's shared key as ``AzureNamedKeyCredential(account, key)``. Inside Airflow the provider's
    ``AzureBatchHook`` builds it from the connection (``sensor_scoring_airflow.batch``)."""
    from azure.batch import BatchClient

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return BatchClient(endpoint=account_url, credential=credential)


# --- outside Airflow ---------------------------------------------------------------------------------------


class AzureBatchBackend:
    """Runs the shard command as an Azure Batch task and waits for it here, sleeping between polls.

    For use outside Airflow (scripts, the contract tests). Inside Airflow the deferrable ``ShardOperator``
    makes the same :func:`submit_shard` call but waits in the triggerer, holding no worker slot. The job is
    :func:`job_id` ``(dag_id, run_id)``, as the operator names it. The ``client`` is the caller's
    (:func:`batch_client`), or one is made for ``account_url`` with ``DefaultAzureCredential``.
    """

    name = "azure_batch"

    def __init__(
        self,
        client: BatchClient | None = None,
        settings: BatchSettings | None = None,
        *,
        account_url: str | None = None,
        dag_id: str = "scoring",
        run_id: str | None = None,
        try_number: int = 1,
        poll_s: float | None = None,
        max_poll_s: float | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.settings = settings or config.current().batch
        self._client, self.account_url = client, account_url
        self.dag_id, self.run_id = dag_id, run_id
        self.try_number = try_number
        self.poll_s = self.settings.poll_s if poll_s is None else poll_s
        self.max_poll_s = self.settings.max_poll_s if max_poll_s is None else max_poll_s
        self.timeout_s = timeout_s

    @property
    def client(self) -> BatchClient:
        if self._client is None:
            if not self.account_url:  # this package stays Airflow-free: a connection is the caller's to resolve
                raise RuntimeError(
                    "AzureBatchBackend has neither a Batch client nor an account_url: pass batch_client(url, "
                    f"credential), or run inside Airflow, where the connection {self.settings.conn_id!r} is used"
                )
            self._client = batch_client(self.account_url)
        return self._client

    def job_for(self, spec_uri: str) -> str:
        """The job of the shard's run: :func:`job_id` of ``dag_id`` and ``run_id`` (default: the run's staging
        folder, which names one run)."""
        return job_id(self.dag_id, self._run_id(spec_uri))

    def _run_id(self, spec_uri: str) -> str:
        return self.run_id or spec_uri.rsplit("/", 2)[0]

    def submit(
        self, spec_uri: str, *, storage_setting: str, label: str = "", command: str = "score-shard"
    ) -> Submission:
        """Add the shard's task (see :func:`submit_shard`) to the run's job."""
        return submit_shard(
            self.client,
            self.settings,
            storage_setting,
            spec_uri,
            dag_id=self.dag_id,
            run_id=self._run_id(spec_uri),
            try_number=self.try_number,
            max_wall_clock=timedelta(seconds=self.timeout_s * 1.1) if self.timeout_s else None,
            label=label,
            command=command,
        )

    def wait(self, job: str, task: str) -> dict[str, Any]:
        """Poll the task until the wait is over (:func:`poll_step`); the finished wait's event."""
        poll = Poll(
            job,
            task,
            self.poll_s,
            self.max_poll_s,
            deadline=time.time() + self.timeout_s if self.timeout_s is not None else None,
        )
        while True:
            step = poll_step(poll, task_summary(self.client.get_task(job, task)), now=time.time())
            if step.terminate:
                terminate_task(self.client, job, task)
            if step.event is not None:
                return step.event
            time.sleep(step.sleep_s)

    def run_shard(self, spec_uri: str, *, storage_setting: str, command: str = "score-shard") -> dict[str, object]:
        submission = self.submit(spec_uri, storage_setting=storage_setting, command=command)
        if submission.reused:
            event = {"status": "completed", **task_summary(self.client.get_task(submission.job_id, submission.task_id))}
        else:
            event = self.wait(submission.job_id, submission.task_id)
        check_outcome(self.client, submission.job_id, event, account_url=self.account_url)
        return read_result(spec_uri, storage_setting, command)
