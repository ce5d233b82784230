"""Where a shard runs. One interface, chosen by name: ``local`` (in the worker) or ``azure_batch``.

Every backend runs the same command, ``python -m sensor_scoring <command> --spec <uri>`` (``read-windows``,
``score-shard`` or ``train-shard``), so a shard behaves the
same on a laptop and on a Batch node, and the shard's result is read back from storage, not from the
process: that is all a remote backend can offer too.

The implementations live in :mod:`sensor_scoring.backends.local` and :mod:`sensor_scoring.backends.azure_batch`;
they import this module, and this module names them only in :data:`BACKENDS` (imported when asked for), so the
package has no import cycle and loading it never loads the Batch code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from sensor_scoring import layout, storage as st


class ShardFailed(RuntimeError):
    """The shard's command ended badly; the message carries its exit code and the tail of its output."""


class Backend(Protocol):
    name: str

    def run_shard(self, spec_uri: str, *, storage_setting: str, command: str = "score-shard") -> dict[str, object]:
        """Run one shard to completion and return its result (the shard's ``result.json``)."""
        ...


#: Shard command -> ``module:function(storage, spec_uri)``: the step the command runs (the CLI, a child process, a
#: Batch task, or the local backend in the task's own process).
SHARD_STEPS: Mapping[str, str] = {
    "read-windows": "sensor_scoring.steps.load:read_windows",
    "score-shard": "sensor_scoring.steps.score:score_shard",
    "train-shard": "sensor_scoring.steps.training:train_shard",
}
#: Shard command -> ``module:function(storage, output_prefix)`` reading the result.json that command writes last.
RESULT_READERS: Mapping[str, str] = {
    "read-windows": "sensor_scoring.steps.load:read_result",
    "score-shard": "sensor_scoring.steps.score:read_shard_result",
    "train-shard": "sensor_scoring.steps.training:read_training_result",
}


def shard_step(command: str) -> Callable[..., Any]:
    """The step function of a shard command (``SHARD_STEPS``); a clear error for an unknown command."""
    if command not in SHARD_STEPS:
        raise ValueError(f"unknown shard command {command!r}; one of {sorted(SHARD_STEPS)}")
    module, _, function = SHARD_STEPS[command].partition(":")
    return cast(Callable[..., Any], getattr(importlib.import_module(module), function))


def shard_command(spec_uri: str, python: str = "python", command: str = "score-shard") -> list[str]:
    """The one command line of a shard, shared by every backend (``train-shard`` for a training shard)."""
    return [python, "-m", "sensor_scoring", command, "--spec", spec_uri]


def read_result(spec_uri: str, storage_setting: str, command: str = "score-shard") -> dict[str, object]:
    """The shard's ``result.json``, beside its spec, checked by the contract of ``command``: what every backend
    returns."""
    if command not in RESULT_READERS:
        raise ValueError(f"unknown shard command {command!r}; one of {sorted(RESULT_READERS)}")
    module, _, function = RESULT_READERS[command].partition(":")
    reader = getattr(importlib.import_module(module), function)
    return cast(dict[str, object], reader(st.open_storage(storage_setting), layout.Shard.of_spec(spec_uri).folder))


#: Backend name -> ``module:class`` of its implementation.
BACKENDS: Mapping[str, str] = {
    "local": "sensor_scoring.backends.local:LocalBackend",
    "azure_batch": "sensor_scoring.backends.azure_batch:AzureBatchBackend",
}


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``, built with its defaults; a clear error for unknown names."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return cast(Backend, getattr(importlib.import_module(module), cls)())
