"""Names that parameters carry (model versions, device ids, tags): names, never paths.

A model version becomes part of a blob path (``versions/<name>/...``) and devices and tags select rows, so each
is checked here, in the package, against one strict pattern, whatever the caller; the DAG's Params schema uses
the same patterns, so the trigger form refuses them first. Refused (``contracts.InvalidName``): ``/`` or ``\\``,
``..``, control characters, a leading dot or dash, more than 128 characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: A model version or alias: letters, digits, ``.``, ``_``, ``-``; starting with a letter or digit; no ``..``.
VERSION_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
#: A device id or tag: the same, plus ``:`` and ``@`` (IoT Hub device ids use them).
SENSOR_NAME_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"

#: A whole UTC hour as the trigger forms take it (``2026-11-25T16:00:00Z``); ``runs.scope`` parses it.
HOUR_PATTERN = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:00(:00(\.0+)?)?(Z|[+-]\d{2}:?00)?$"

_VERSION = re.compile(VERSION_PATTERN)
_SENSOR_NAME = re.compile(SENSOR_NAME_PATTERN)


def check_version(value: object, what: str = "model_version") -> str:
    """``value`` if it is a model version or alias name, else ``InvalidName`` saying why."""
    return _check(value, _VERSION, VERSION_PATTERN, what)


def check_sensor_names(values: Iterable[object] | None, what: str) -> list[str] | None:
    """Device ids or tags of a rescoring subset, each a name (None and [] pass: all of them)."""
    if values is None:
        return None
    return [_check(v, _SENSOR_NAME, SENSOR_NAME_PATTERN, what) for v in values]


def _check(value: object, pattern: re.Pattern[str], text: str, what: str) -> str:
    from sensor_scoring.contracts import InvalidName  # lazily: the DAG file imports the patterns at parse

    if not isinstance(value, str):
        raise InvalidName(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not pattern.fullmatch(value):
        raise InvalidName(f"{what} {value!r} is not a name (a name matches {text}: no '/', '..' or control characters)")
    return value
