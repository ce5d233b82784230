"""Where a shard runs. One interface, chosen by name: ``local`` now, ``azure_batch`` next.

Every backend runs the same command, ``python -m scoring score-shard --spec <uri>``, so a shard behaves the
same on a laptop and on a Batch node, and the shard's result is read back from storage, not from the
process: that is all a remote backend can offer too.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Protocol

from scoring import config, storage as st

log = logging.getLogger(__name__)


class ShardFailed(RuntimeError):
    """The shard's command ended badly; the message carries its exit code and the tail of its output."""


class Backend(Protocol):
    name: str

    def run_shard(self, spec_uri: str, *, storage_setting: str) -> dict[str, object]:
        """Run one shard to completion and return its result (the shard's ``result.json``)."""
        ...


def shard_command(spec_uri: str, python: str = "python") -> list[str]:
    """The one command line of a shard, shared by every backend."""
    return [python, "-m", "scoring", "score-shard", "--spec", spec_uri]


class LocalBackend:
    """Runs the shard command as a child process of the worker, streaming its output to the task log.

    A child process rather than a function call: the shard gets a fresh interpreter exactly as on Batch,
    and its memory is returned to the system when it ends.
    """

    name = "local"

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s

    def run_shard(self, spec_uri: str, *, storage_setting: str) -> dict[str, object]:
        env = dict(os.environ)
        env[config.STORAGE_ENV] = storage_setting  # through the environment: never on a command line or log
        command = shard_command(spec_uri, python=sys.executable)
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
        from scoring.pipeline import read_shard_result

        spec_container, spec_path = st.parse_uri(spec_uri)
        output_prefix = st.make_uri(spec_container, spec_path.rsplit("/", 1)[0] + "/")
        return read_shard_result(st.open_storage(storage_setting), output_prefix)


BACKENDS: Mapping[str, type] = {"local": LocalBackend}
PLANNED = {"azure_batch": "the Azure Batch backend is not built yet; use backend=local"}


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``; a clear error for unknown or not-yet-built ones."""
    if name in BACKENDS:
        return BACKENDS[name]()
    if name in PLANNED:
        raise NotImplementedError(PLANNED[name])
    raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
