"""``make demo``: one hour scored end to end on a laptop, from nothing, in a couple of minutes.

Starts Azurite (unless ``SCORING_STORAGE`` points elsewhere or one already listens on 10000), lands 24 hours
of simulated windows and trains a production model version if none exist, runs the ``sensor_scoring`` DAG
with ``dag.test()`` for the latest complete hour and prints what happened. Re-running reuses what exists.

It tells that in one line per step (progress bars redraw in place on a terminal, and are one final line
elsewhere), then the summary. Everything else (Airflow's task logs, ``airflow db migrate``, the libraries'
logging and warnings) goes to ``$AIRFLOW_HOME/demo.log``, named at the end; a failed run shows the log's error
and traceback. ``verbose=True`` (``python -m dev.demo --verbose``) leaves all of it on the terminal.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from dev.azurite import REPO, Azurite, connection_string, port_open
from sensor_scoring import features as feature_sets, settings as config
from sensor_scoring.models import fitting

if TYPE_CHECKING:
    from sensor_scoring.contracts import Manifest

AIRFLOW_HOME = REPO / ".airflow"
AZURITE_DATA = REPO / ".azurite"
OUTPUT = REPO / ".demo-output"


def prepare_airflow(home: Path, dags_folder: Path, output: TextIO | None = None) -> None:
    """Point Airflow at a project-local home (SQLite) and the project's dags/, and migrate its DB.

    Must run before ``airflow`` is imported: Airflow reads its configuration at import time. The migration's
    output goes to ``output`` (a real file) if given, else nowhere.
    """
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(dags_folder))
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    if output is not None:
        output.flush()
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        stdout=output or subprocess.DEVNULL,
        stderr=output or subprocess.PIPE,
    )


def load_dag(path: Path):
    """The DAG object of a DAG file, imported the way the DAG processor would."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.dag


def ensure_data(
    storage,
    containers: config.Containers,
    devices: int,
    tags: int,
    first: datetime,
    now: datetime,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Simulate every hour from ``first`` up to now not simulated whole before (and the current one).

    An hour is done when its label file was written after the hour ended: a folder is no sign (the
    previous hour's late windows land in it too), and an hour simulated while it was still going on is
    partial. ``progress(done, total)`` hears of each hour landed, if given; ``reused`` counts the hours left as
    they were.
    """
    from sensor_scoring.tools.simulate import SimulationConfig, label_path, simulate_to_storage
    from sensor_scoring.windows import HOUR

    cfg = SimulationConfig(devices=devices, tags=tags, seed=42)
    todo, checked, hour = [], 0, first
    while hour < now:
        checked += 1
        current = hour + HOUR > now
        labels = storage.list(containers.labels, label_path(hour))
        if current or not labels or labels[0].last_modified < hour + HOUR:
            todo.append(hour)
        hour += HOUR
    totals = {"hours": 0, "windows": 0, "reused": checked - len(todo)}
    if progress is not None:
        progress(0, len(todo))
    for done, hour in enumerate(todo, 1):
        # the current hour is a live stream: land what has "happened" so far
        landed = simulate_to_storage(
            storage,
            cfg,
            hour,
            min(hour + HOUR, now),
            windows_container=containers.windows,
            labels_container=containers.labels,
        )
        totals["hours"] += landed["hours"]
        totals["windows"] += landed["windows"]
        if progress is not None:
            progress(done, len(todo))
    return totals


class DemoFailed(RuntimeError):
    """The DAG run did not succeed; the demo has already shown why (the log's error) on its output."""


LABEL = 12  # width of the step names, so that what each step says lines up


class Story:
    """The demo's own output: one line per step, progress redrawn in place on a terminal.

    ``live`` (a terminal, not verbose): a step in progress redraws its line with a carriage return; elsewhere
    (CI, a pipe, pytest) only each step's final line is written. Every line also goes to ``log`` if given.
    """

    def __init__(self, out: TextIO, *, live: bool, log: TextIO | None = None) -> None:
        self.out, self.live, self.log = out, live, log
        self._lock = threading.Lock()
        self._pending = False  # a transient line is on the terminal
        self._drawn = 0.0

    def step(self, name: str, text: str) -> None:
        self._write(f"{name:<{LABEL}} {text}", final=True)

    def line(self, text: str = "") -> None:
        self._write(text, final=True)

    def transient(self, name: str, text: str, *, force: bool = False) -> None:
        """Redraw the current step's line (a terminal only; at most ten times a second unless ``force``)."""
        if not self.live or (not force and time.monotonic() - self._drawn < 0.1):
            return
        self._drawn = time.monotonic()
        self._write(f"{name:<{LABEL}} {text}", final=False)

    def progress(self, name: str, unit: str) -> Progress:
        return Progress(self, name, unit)

    def _write(self, line: str, *, final: bool) -> None:
        with self._lock:
            if self.live:
                if not final:  # one row of the terminal, or the carriage return would not get back to its start
                    line = line[: shutil.get_terminal_size().columns - 1]
                # carriage return, the line, clear to its end: it replaces the transient line that was there
                self.out.write(("\r" + line + "\x1b[K" if self._pending else line) + ("\n" if final else ""))
                self._pending = not final
            elif final:
                self.out.write(line + "\n")
            self.out.flush()
            if final and self.log is not None and not self.log.closed:
                self.log.write(f"demo: {line}\n")
                self.log.flush()


@dataclass
class Progress:
    """A progress bar on one line; usable as the ``progress(done, total)`` hook of the steps."""

    story: Story
    name: str
    unit: str
    done: int = 0
    total: int = 0
    width: int = field(default=24, repr=False)

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self.story.transient(self.name, f"{self.bar()} {done}/{total} {self.unit}", force=done in (0, total))

    def bar(self) -> str:
        filled = self.width * self.done // self.total if self.total else self.width
        return "[" + "#" * filled + "." * (self.width - filled) + "]"

    def finish(self, text: str) -> None:
        self.story.step(self.name, f"{self.bar()} {text}")


class _Sink(io.TextIOBase):
    """Stands for stdout and stderr while the demo is quiet: what is written goes to the log file.

    One object for the life of the process: loggers that took ``sys.stdout`` while the demo ran (structlog
    keeps the stream of each logger it caches) keep writing to the current log rather than to a closed file.
    Each complete line is shown to ``on_line`` (the demo's live view of the DAG run), if set.
    """

    def __init__(self) -> None:
        super().__init__()
        self.file: TextIO | None = None
        self.on_line: Callable[[str], None] | None = None
        self._partial = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            if self.file is not None and not self.file.closed:
                self.file.write(text)
            if self.on_line is not None:
                *lines, self._partial = (self._partial + text).split("\n")
                for line in lines:
                    self.on_line(line)
        return len(text)

    def flush(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.flush()


_SINK = _Sink()


def _console_handlers() -> list[logging.StreamHandler]:
    """Every plain ``logging.StreamHandler`` (a console handler: Airflow's, ``basicConfig``'s); not files or
    other subclasses such as a test runner's capture."""
    loggers = [logging.getLogger()] + [
        lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)
    ]
    return [h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler]


@contextmanager
def quiet(log: TextIO) -> Iterator[None]:
    """Send ``sys.stdout``, ``sys.stderr`` and the console logging handlers to ``log`` for a while.

    Airflow's in-process ``dag.test()`` logs through structlog, whose loggers write to ``sys.stdout`` as it was
    when each was first used, and through the standard library's root handler, which Airflow points at
    ``sys.stdout`` when it is imported. Both are caught here; afterwards the handlers get their streams back.
    """
    if _SINK.file is not None and _SINK.file is not log:
        _SINK.file.close()
    _SINK.file = log
    swapped = {handler: _set_stream(handler, _SINK) for handler in _console_handlers()}
    try:
        with redirect_stdout(_SINK), redirect_stderr(_SINK):  # type: ignore[type-var]
            yield
    finally:
        _SINK.on_line = None
        for handler in _console_handlers():
            if handler.stream is _SINK:  # swapped here, or made while quiet (Airflow's, at its import)
                _set_stream(handler, swapped.get(handler) or sys.stdout)
        log.flush()


def _set_stream(handler: logging.StreamHandler, stream: TextIO) -> TextIO:
    """``handler.setStream`` that does not mind an old stream closed under it (one a test runner captured)."""
    with handler.lock or threading.RLock():
        old = handler.stream
        try:
            old.flush()
        except (ValueError, OSError):
            pass
        handler.stream = stream
    return old


@dataclass
class LogRecord:
    """One warning or error of the log: its first line, the lines under it (a traceback), the task it was in."""

    level: str
    logger: str
    message: str
    task: str | None
    lines: list[str]


# structlog's console lines (Airflow, tasks) and cli.main's basicConfig lines (before Airflow takes over)
_STRUCTLOG = re.compile(r"^\S+ \[(?P<level>\w+)\s*\] (?P<message>.*?)(?: +\[(?P<logger>[\w.]+)\](?: .*)?)?$")
_STDLIB = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$")
_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d")
_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)")
_SERIOUS = {"warning": "warning", "error": "error", "exception": "error", "critical": "error", "fatal": "error"}


def scan_log(text: str) -> list[LogRecord]:
    """The warnings and errors in a demo log, and the Python tracebacks written to it outside any record."""
    found: list[LogRecord] = []
    current: LogRecord | None = None
    task = None
    for line in text.splitlines():
        if _RECORD_START.match(line) or line.startswith("demo: "):
            current = None
            if started := _TASK_START.search(line):
                index = int(started["index"])
                task = started["task"] + (f"[{index}]" if index >= 0 else "")
            match = _STRUCTLOG.match(line) or _STDLIB.match(line)
            level = _SERIOUS.get(match["level"].lower()) if match else None
            if match and level:
                current = LogRecord(level, match["logger"] or "", match["message"].strip(), task, [])
                found.append(current)
        elif line.startswith("Traceback (most recent call last)") and current is None:
            current = LogRecord("error", "", "Python traceback", task, [line])
            found.append(current)
        elif current is not None:
            current.lines.append(line)
    return found


def condensed_traceback(lines: list[str]) -> list[str]:
    """Of a traceback, each exception of the chain with the frame that raised it."""
    out: list[str] = []
    frame: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("File "):
            frame = [line]
        elif len(frame) == 1 and line.startswith("    ") and text.strip("^~ "):
            frame.append(line)
        elif (
            line
            and not line[0].isspace()
            and not line.startswith(("Traceback (most recent call last)", "The above exception", "During handling"))
        ):
            out += frame + [line]
            frame = []
    return out


def _shown(path: Path | str) -> str:
    """A path as short as it is clear: relative to the working directory when under it."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _counted(records: list[LogRecord]) -> str:
    warnings = sum(r.level == "warning" for r in records)
    errors = len(records) - warnings
    return f"{warnings} warning{'s' * (warnings != 1)}, {errors} error{'s' * (errors != 1)}"


#: The exception of commit refusing a run whose upstream failed (``sensor_scoring_airflow.partial``; named, not
#: imported, so the demo imports no Airflow before it needs to).
UPSTREAM_REFUSAL = "UpstreamNotCommitted"


def show_log_errors(story: Story, log_path: Path, *, limit: int = 16) -> None:
    """The log's last error (condensed traceback) on the story's output, so nobody has to open the log."""
    records = scan_log(log_path.read_text(encoding="utf-8", errors="replace")) if log_path.exists() else []
    errors = [r for r in records if r.level == "error"]
    # commit refusing a run whose upstream failed names that failure: show the failure itself, not the refusal
    causes = [r for r in errors if not any(UPSTREAM_REFUSAL in line for line in [r.message, *r.lines])]
    errors = causes or errors
    if not errors:
        story.line(f"  {_shown(log_path)} has {_counted(records)}")
        return
    last = errors[-1]
    where = f"{last.task}: " if last.task else ""
    which = "the error" if len(errors) == 1 else "the last error"
    story.line(f"  {_shown(log_path)} has {_counted(records)}; {which}, its traceback condensed:")
    shown = [f"{where}{last.message} [{last.logger}]" if last.logger else f"{where}{last.message}"]
    shown += condensed_traceback(last.lines) or last.lines
    for line in shown[:limit]:
        story.line(f"  | {line}")
    if len(shown) > limit:
        story.line(f"  | ... ({len(shown) - limit} more lines in the log)")


def default_log_path() -> Path:
    """Where a quiet demo writes what it does not show: ``demo.log`` in Airflow's home (``.airflow/``)."""
    return Path(os.environ.get("AIRFLOW_HOME") or AIRFLOW_HOME) / "demo.log"


def run_demo(
    *,
    devices: int = 20,
    tags: int = 3,
    hours: int = 24,
    sensors_per_shard: int = 15,
    verbose: bool = False,
    log_path: Path | None = None,
) -> dict[str, object]:
    """Run the demo and return its summary; raises ``DemoFailed`` (after saying why) if the DAG run failed."""
    fleet = {"devices": devices, "tags": tags, "hours": hours, "sensors_per_shard": sensors_per_shard}
    if verbose:
        return _run(Story(sys.stdout, live=False), None, **fleet)
    log_path = Path(log_path or default_log_path())
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("", encoding="utf-8")
    # append, since airflow db migrate writes to it too; left open for loggers that still hold it (see _Sink)
    log = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    story = Story(sys.stdout, live=sys.stdout.isatty(), log=log)
    with quiet(log):
        try:
            return _run(story, log_path, log=log, **fleet)
        except DemoFailed:
            raise
        except BaseException as exc:
            said = str(exc).splitlines()
            story.step("Failed", type(exc).__name__ + (f": {said[0]}" if said else ""))
            show_log_errors(story, log_path)  # what went wrong before (airflow db migrate, say); Python shows the rest
            traceback.print_exc(file=log)
            raise


def _run(
    story: Story,
    log_path: Path | None,
    *,
    devices: int,
    tags: int,
    hours: int,
    sensors_per_shard: int,
    log: TextIO | None = None,
) -> dict[str, object]:
    from sensor_scoring import layout
    from sensor_scoring.contracts import Manifest
    from sensor_scoring.models import registry
    from sensor_scoring.storage import make_uri, open_storage

    azurite = None
    if config.STORAGE_ENV not in os.environ:
        if not port_open("127.0.0.1", 10000):
            azurite = Azurite(AZURITE_DATA, port=10000).start()
            story.step("Azurite", f"up on 127.0.0.1:10000 (pid {azurite.proc.pid}, data in {_shown(AZURITE_DATA)}/)")
        else:
            story.step("Azurite", "using the Azurite (or other blob server) already listening on 127.0.0.1:10000")
        os.environ[config.STORAGE_ENV] = connection_string("127.0.0.1", 10000)
    else:
        story.step("Storage", f"{config.STORAGE_ENV} from the environment (no Azurite started)")
    try:
        storage, containers = open_storage(), config.Containers.from_env()
        now = datetime.now(UTC)
        latest = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        first = latest - timedelta(hours=hours - 1)
        bar = story.progress("Windows", "hours")
        landed = ensure_data(storage, containers, devices, tags, first, now, progress=bar)
        bar.finish(
            f"{landed['hours']} hour(s) landed ({landed['windows']} windows), {landed['reused']} already there; "
            f"{devices} devices x {tags} sensors"
        )
        try:
            version = registry.resolve_version(storage, containers.models, registry.PRODUCTION_ALIAS)
            story.step("Models", f"version {version} reused (alias {registry.PRODUCTION_ALIAS})")
        except LookupError:
            story.transient("Models", "training: the training DAG's steps (gather, shards, evaluate, register) ...")
            # trained on [first, latest), the scored hour held back: the gate measures what the DAG run will see
            trained = train_models(storage, containers, first, latest + timedelta(hours=1))
            version = str(trained["version"])
            if not trained["promoted"]:
                # a demo of a few hours needs a version to score with: the gate's verdict is shown, the move says why
                from sensor_scoring.models import promotion

                promotion.move_alias(
                    storage,
                    containers.models,
                    version,
                    action="promote",
                    reason=f"the demo scores with it; the gate: {trained['reason']}",
                    by="demo",
                )
            story.step("Models", describe_training(trained, first, latest))

        story.transient("Airflow", "migrating the metadata DB, loading the DAG ...", force=True)
        started = time.monotonic()
        prepare_airflow(AIRFLOW_HOME, REPO / "dags", output=log)
        dag = load_dag(REPO / "dags" / "sensor_scoring.py")
        home = Path(os.environ["AIRFLOW_HOME"])
        story.step(
            "Airflow",
            f"metadata DB migrated in {_shown(home)}/, DAG {dag.dag_id} loaded ({time.monotonic() - started:.1f} s)",
        )

        run, took = _dag_run(story, dag, latest, sensors_per_shard)
        state = str(getattr(run, "state", "unknown"))
        story.step("DAG run", f"{state} in {took:.1f} s: {_tasks_line(run)}")
        if state != "success":
            if log_path is not None:
                show_log_errors(story, log_path)
            raise DemoFailed(f"DAG run {state}" + (f"; its log: {log_path}" if log_path else ""))

        part = layout.Partition(latest)
        manifest = Manifest.from_json(
            storage.read_bytes(containers.predictions, part.manifest),
            source=make_uri(containers.predictions, part.manifest),
        )
        local = OUTPUT / "predictions" / part.data
        local.parent.mkdir(parents=True, exist_ok=True)
        data = storage.read_bytes(containers.predictions, part.data)
        local.write_bytes(data)
        summary = summarise(storage, containers, latest, manifest, local)
        summary["dag_run_state"] = state
        story.step(
            "Partition",
            f"{summary['partition']}{layout.PARTITION_FILE}: {summary['windows_scored']} rows "
            f"({len(data) / 1024:.0f} KiB), copied to {_shown(OUTPUT)}/",
        )
        if log_path is not None:
            records = scan_log(log_path.read_text(encoding="utf-8", errors="replace"))
            story.step(
                "Log",
                f"{_shown(log_path)}: Airflow's and the libraries' logs, {_counted(records)} "
                "(--verbose, or make demo VERBOSE=1, shows them here)",
            )
        print_summary(summary, part.prefix, out=story)
        return summary
    finally:
        if azurite is not None:
            azurite.stop()
            story.step("Azurite", f"stopped (its data stays in {_shown(AZURITE_DATA)}/ for the next run)")


def _dag_run(story: Story, dag, latest: datetime, sensors_per_shard: int):
    """``dag.test()`` for the hour after ``latest``, with the running task on a terminal's status line."""
    seen: list[str] = []

    def on_line(line: str) -> None:
        if started := _TASK_START.search(line):
            index = int(started["index"])
            seen.append(started["task"] + (f"[{index}]" if index >= 0 else ""))
            story.transient("DAG run", f"running {seen[-1]} ({len(seen) - 1} task(s) done)", force=True)

    story.transient("DAG run", f"starting {dag.dag_id} ...", force=True)
    if story.live:
        _SINK.on_line = on_line
    started = time.monotonic()
    try:
        # A manual run at logical date T covers the hour that ended at T: [latest, latest + 1h).
        run = dag.test(logical_date=latest + timedelta(hours=1), run_conf={"sensors_per_shard": sensors_per_shard})
    finally:
        _SINK.on_line = None
    return run, time.monotonic() - started


def _tasks_line(run) -> str:
    """The run's tasks in the order they started, mapped ones counted: ``a > b > score_shard x3 > c``."""
    try:
        tis = sorted(run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date or 0, ti.map_index))
    except Exception:  # noqa: BLE001 - the line is a courtesy; the run's state is what matters
        return "task states not readable"
    groups: list[tuple[str, str, int]] = []
    for ti in tis:
        ti_state = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
        if groups and groups[-1][:2] == (ti.task_id, ti_state):
            groups[-1] = (ti.task_id, ti_state, groups[-1][2] + 1)
        else:
            groups.append((ti.task_id, ti_state, 1))
    parts = [
        task + (f" x{count}" if count > 1 else "") + ("" if ti_state == "success" else f" {ti_state}")
        for task, ti_state, count in groups
    ]
    return f"{len(tis)} task(s), " + " > ".join(parts)


#: The demo's training run: the training DAG's defaults, with one held-back hour (the hour the demo scores) and
#: no refit: the version scores that hour, so its models must not have been fit on it.
DEMO_TRAINING = {
    "holdout_hours": 1,
    "sensors_per_shard": 100,
    "nu": fitting.DEFAULT_NU,
    "min_rows": 30,
    "false_alarm_rate": fitting.DEFAULT_FALSE_ALARM_RATE,
    "threshold_mads": None,
    "features": feature_sets.DEFAULT_FEATURE_SET,
    "adaptive_nu": fitting.DEFAULT_ADAPTIVE_NU,
    "refit": False,
    "devices": [],
    "tags": [],
    "late_folders": 1,
    "promote": True,
}


def train_models(
    storage,
    containers: config.Containers,
    first: datetime,
    latest: datetime,
    params: dict[str, object] | None = None,
    version: str | None = None,
) -> dict[str, object]:
    """A version trained, evaluated and promoted by policy through the training DAG's own steps
    (``steps.training.train_locally``, as ``python -m sensor_scoring train`` runs them), with the training DAG's
    params (``DEMO_TRAINING`` unless given)."""
    from sensor_scoring.models import promotion, registry
    from sensor_scoring.runs.scope import Scope
    from sensor_scoring.steps.training import train_locally

    version = version or registry.new_version_name()
    run = Scope(storage, containers, f"demo training {version}", first, latest)
    # The policy's defaults but any flagged share and any false-alarm rate: a demo of a few hours trains on a slice of
    # the simulator's daily cycle, and its held-back hour, at another time of day, is flagged far more than after a
    # week's training; the demo shows that measurement (the summary's "model quality") rather than refusing to score.
    policy = promotion.Policy(max_flagged_share=1.0, false_alarm_rate=1.0)
    return train_locally(run, params or DEMO_TRAINING, policy, version=version)


def describe_training(trained: dict[str, object], first: datetime, latest: datetime) -> str:
    """One line: the version, its range, whether the gate promoted it."""
    what = (
        "promoted"
        if trained["promoted"]
        else f"promoted for the demo although the gate refused it: {trained['reason']}"
    )
    return (
        f"{trained['models']} model(s) trained on [{first:%Y-%m-%d %H:%M}, {latest:%H:%M}) UTC as "
        f"{trained['version']}, {what}"
    )


def version_quality(storage, containers: config.Containers, version: str) -> dict[str, object]:
    """What a version's manifest says of its alarms: the false-alarm rate it was calibrated to
    (``params.false_alarm_rate``, where training records one), and the gate's measurement on the held-back hours
    (``lineage.evaluation``): the share of windows flagged and the recall on the simulator's labels."""
    from sensor_scoring.models import registry

    manifest = registry.read_manifest(storage, containers.models, version)
    params = manifest.get("params") or {}
    lineage = manifest.get("lineage") or {}
    assert isinstance(params, dict) and isinstance(lineage, dict)
    cand = (lineage.get("evaluation") or {}).get("candidate_all") or {}
    return {
        "false_alarm_rate": params.get("false_alarm_rate"),
        "held_back_flagged_share": cand.get("flagged_share"),
        "held_back_recall": cand.get("recall"),
        "held_back_anomalous": cand.get("anomalous"),
    }


def summarise(
    storage, containers: config.Containers, hour: datetime, manifest: Manifest, local: Path
) -> dict[str, object]:
    """Numbers for the person at the terminal, including how the flags compare with the simulator's labels."""
    import pandas as pd

    from sensor_scoring.storage import read_parquet
    from sensor_scoring.tools.simulate import label_path

    predictions = pd.read_parquet(local)
    counts = manifest.counts
    summary: dict[str, object] = {
        "hour": hour.isoformat(),
        "windows_read": counts.landed,
        "sensors_scored": int(predictions[["device_id", "tag"]].drop_duplicates().shape[0]),
        "windows_scored": counts.scored,
        "anomalies": counts.anomalies,
        "quarantined": counts.quarantined,
        "duplicates": counts.duplicates,
        "model_version": manifest.model_version,
        "partition": f"az://{containers.predictions}/{local.parent.relative_to(OUTPUT / 'predictions').as_posix()}/",
        "local_copy": str(local),
    }
    summary.update(version_quality(storage, containers, str(manifest.model_version)))
    try:
        labels = read_parquet(storage, containers.labels, label_path(hour))
        merged = predictions.merge(labels, on=["device_id", "tag", "window_end"], how="left")
        labelled = merged["anomaly"].notna()
        summary["labelled_anomalies"] = int(labelled.sum())
        summary["labelled_anomalies_flagged"] = int((labelled & merged["is_anomaly"]).sum())
    except FileNotFoundError:
        pass
    return summary


def print_summary(summary: dict[str, object], part: str, out: Story | None = None) -> None:
    say = out.line if out is not None else print
    say()
    say(f"sensor_scoring, hour {summary['hour']} -> DAG run {summary['dag_run_state']}")
    say(f"  windows read       {summary['windows_read']}")
    say(
        f"  sensors scored     {summary['sensors_scored']} ({summary['windows_scored']} windows, "
        f"model {summary['model_version']})"
    )
    say(f"  anomalies found    {summary['anomalies']}")
    quality = []
    if summary.get("false_alarm_rate") is not None:
        quality.append(f"false-alarm rate {float(summary['false_alarm_rate']):.1%} (calibrated)")  # type: ignore[arg-type]
    if summary.get("held_back_flagged_share") is not None:
        quality.append(f"flags {float(summary['held_back_flagged_share']):.1%} of held-back windows")  # type: ignore[arg-type]
    if summary.get("held_back_recall") is not None:
        quality.append(
            f"recall {float(summary['held_back_recall']):.0%} on the simulator's "  # type: ignore[arg-type]
            f"{summary['held_back_anomalous']} labelled anomalous held-back windows"
        )
    if quality:
        say(f"  model quality      {'; '.join(quality)}")
    if "labelled_anomalies" in summary:
        say(
            f"  simulator labels   {summary['labelled_anomalies_flagged']} of {summary['labelled_anomalies']} "
            "injected anomalous windows flagged"
        )
    say(f"  quarantined rows   {summary['quarantined']} (duplicates collapsed: {summary['duplicates']})")
    say(f"  partition          {summary['partition']}")
    local = _shown(str(summary["local_copy"]))
    say(f"  local copy         {local}")
    say(f"  read it with       .venv/bin/python -c \"import pandas as pd; print(pd.read_parquet('{local}'))\"")


def main(argv: list[str] | None = None) -> int:
    """``python -m dev.demo`` (``make demo``): the demo for people, one line per step and a summary."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dev.demo",
        description="Azurite + simulated data + models + one DAG run, with a summary. "
        "One line per step, then a summary; Airflow's task logs and the rest go to $AIRFLOW_HOME/demo.log "
        "(.airflow/demo.log) unless --verbose.",
    )
    parser.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    parser.add_argument("--tags", type=int, default=3, help="sensors per device, 1-8 (default 3)")
    parser.add_argument(
        "--hours", type=int, default=24, help="hours of windows up to the latest complete one (default 24)"
    )
    parser.add_argument("--sensors-per-shard", type=int, default=15)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="leave Airflow's logs and the libraries' output on the terminal instead of in the log file",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        run_demo(
            devices=args.devices,
            tags=args.tags,
            hours=args.hours,
            sensors_per_shard=args.sensors_per_shard,
            verbose=args.verbose,
        )
    except DemoFailed:  # the demo has shown the log's error already
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
