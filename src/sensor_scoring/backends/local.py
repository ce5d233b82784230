"""The ``local`` backend: a shard in the task's own process, or the shard command as a child process of it."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import time

from sensor_scoring import settings as config, storage as st
from sensor_scoring.backends import ShardFailed, read_result, shard_command, shard_step

log = logging.getLogger(__name__)


class LocalBackend:
    """Runs a shard where the task runs, in one of two modes (``SCORING_LOCAL_SHARDS``).

    ``task`` (default): the shard command's own step function, called in the task's process with the same
    storage setting. Safe because Airflow 3 runs every task instance in a process of its own (the task runner),
    which ends with the task and returns the shard's memory; it saves an interpreter start and the imports per
    shard. ``process``: the shard command as a child process, a fresh interpreter exactly as on Batch, for an
    operator who wants the shard isolated from the worker (or a wrapper around ``sys.executable``). Either way
    the result is the ``result.json`` the shard wrote last, read back as every backend reads it.
    """

    name = "local"

    def __init__(self, timeout_s: float | None = None, mode: str | None = None) -> None:
        self.timeout_s = timeout_s  # the child's timeout; in the task's process Airflow's execution_timeout applies
        self.mode = mode or config.current().local_shards
        if self.mode not in config.LOCAL_SHARD_MODES:
            raise ValueError(f"unknown local shard mode {self.mode!r}; one of {', '.join(config.LOCAL_SHARD_MODES)}")

    def run_shard(self, spec_uri: str, *, storage_setting: str, command: str = "score-shard") -> dict[str, object]:
        began = time.perf_counter()
        if self.mode == "task":
            self.run_step(spec_uri, storage_setting=storage_setting, command=command)
        else:
            self.run_command(
                shard_command(spec_uri, python=sys.executable, command=command), storage_setting=storage_setting
            )
        result = read_result(spec_uri, storage_setting, command)
        log.info(
            "Shard done in %.2f s (%s mode); peak RSS %s",
            time.perf_counter() - began,
            self.mode,
            peak_rss_text(self.mode),
        )
        return result

    def run_step(self, spec_uri: str, *, storage_setting: str, command: str) -> None:
        """The command's step in this process; any error is ``ShardFailed`` (with its cause), as a failed child is."""
        step = shard_step(command)
        log.info("Running %s --spec %s in the task's process", command, spec_uri)
        try:
            step(st.open_storage(storage_setting), spec_uri)
        except Exception as exc:
            raise ShardFailed(f"{command} failed in the task's process: {type(exc).__name__}: {exc}") from exc

    def run_command(self, command: list[str], *, storage_setting: str) -> None:
        """Run one shard command (scoring or training) to completion; ``ShardFailed`` when it exits non-zero."""
        env = dict(os.environ)  # the worker's whole environment: the shard reads the same settings
        env[config.STORAGE_ENV] = storage_setting  # through the environment: never on a command line or log
        log.info("Running %s", " ".join(command))
        tail: list[str] = []
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.info("[shard] %s", line.rstrip())
                tail = (tail + [line.rstrip()])[-20:]
            code = proc.wait(timeout=self.timeout_s)
        if code != 0:
            raise ShardFailed(f"shard command exited with code {code}: " + " | ".join(tail[-5:]))


def peak_rss_text(mode: str) -> str:
    """The peak resident set of this process, and of its largest finished child in ``process`` mode, for the log.

    Linux counts a child's peak from its fork, which includes what it shared with this process then.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if mode != "process":
        return f"{own:.0f} MiB (this process)"
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return f"{own:.0f} MiB (this process), {child:.0f} MiB (largest shard child)"
