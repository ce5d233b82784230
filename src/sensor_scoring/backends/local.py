"""The ``local`` backend: the shard command as a child process of the worker."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from sensor_scoring import settings as config
from sensor_scoring.backends import ShardFailed, read_result, shard_command

log = logging.getLogger(__name__)


class LocalBackend:
    """Runs the shard command as a child process of the worker, streaming its output to the task log.

    A child process rather than a function call: the shard gets a fresh interpreter exactly as on Batch,
    and its memory is returned to the system when it ends.
    """

    name = "local"

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s

    def run_shard(self, spec_uri: str, *, storage_setting: str, command: str = "score-shard") -> dict[str, object]:
        self.run_command(
            shard_command(spec_uri, python=sys.executable, command=command), storage_setting=storage_setting
        )
        return read_result(spec_uri, storage_setting, command)

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
