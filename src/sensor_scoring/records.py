"""Frozen dataclasses that convert to and from JSON strictly, by their fields' annotations.

The base of every record of ``sensor_scoring.contracts``. Conversion is driven by the annotations, so a record
states its schema once: ``to_dict`` gives plain JSON values (datetimes as ISO text, tuples as lists) and
``from_dict`` checks every field, converting back. Understood annotations: ``str``, ``int``, ``float`` (an
integer is accepted), ``bool``, ``datetime`` (ISO text with an offset), ``X | None``, ``Literal[...]``,
``tuple[X, ...]``, ``dict[str, X]``, ``Any`` (passed through) and nested records. A field with a default may be
absent from the dict (how a field is added without a new schema version); every other field must be present.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from datetime import datetime
from typing import Any, ClassVar, Literal, Self, Union


class ContractError(ValueError):
    """Data crossing between tasks does not match its contract: the message names the field and the source."""


@dataclasses.dataclass(frozen=True)
class Record:
    """Base of the records: dict conversion by the dataclass fields' annotations, strict both ways.

    A subclass with a ``SCHEMA_VERSION`` is a top-level record: its dict carries ``schema_version`` and
    ``from_dict`` refuses any other version. ``KIND`` names the record in error messages.
    """

    KIND: ClassVar[str] = "record"
    SCHEMA_VERSION: ClassVar[int | None] = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (datetimes as ISO text, tuples as lists): what XCom carries."""
        out: dict[str, Any] = {}
        if self.SCHEMA_VERSION is not None:
            out["schema_version"] = self.SCHEMA_VERSION
        for item in dataclasses.fields(self):
            out[item.name] = _dump(getattr(self, item.name))
        return out

    def to_json(self, indent: int | None = None) -> bytes:
        """The record as a blob's bytes (UTF-8 JSON)."""
        return json.dumps(self.to_dict(), indent=indent, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes | str, source: str) -> Self:
        """Parse and check a blob; ``source`` (its URI) is named in any error."""
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise ContractError(f"{cls.KIND} from {source} is not JSON: {exc}") from None
        return cls.from_dict(parsed, source)

    @classmethod
    def from_dict(cls, data: object, source: str) -> Self:
        """Check and convert ``data`` (an XCom value or parsed blob); ``source`` is named in any error."""
        where = f"{cls.KIND} from {source}"
        if not isinstance(data, dict):
            raise ContractError(f"{where}: expected an object, got {type(data).__name__}")
        if cls.SCHEMA_VERSION is not None:
            data = dict(data)
            version = data.pop("schema_version", None)
            if version is None:
                raise ContractError(
                    f"{where}: field 'schema_version' is missing (written before records were "
                    f"versioned?); this code reads schema_version {cls.SCHEMA_VERSION}"
                )
            if version != cls.SCHEMA_VERSION:
                raise ContractError(
                    f"{where}: schema_version {version!r} is not {cls.SCHEMA_VERSION}, the version "
                    "this code reads (written by another release of sensor_scoring?)"
                )
        return cls._build(data, where, "")

    @classmethod
    def _build(cls, data: dict[Any, Any], where: str, path: str) -> Self:
        hints = _hints(cls)
        names = [item.name for item in dataclasses.fields(cls)]
        unknown = sorted(str(key) for key in data if key not in names)
        if unknown:
            raise ContractError(f"{where}: unknown field(s) {', '.join(repr(path + k) for k in unknown)}")
        values = {}
        for item in dataclasses.fields(cls):
            name = item.name
            if name not in data:
                # a field added after a record was first written carries a default: older blobs still read
                if item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING:
                    continue
                raise ContractError(f"{where}: field {path + name!r} is missing")
            values[name] = _load(hints[name], data[name], where, path + name)
        return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a record class (cached: from_dict runs once per row of a list)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_dump(item) for item in value]
    if isinstance(value, dict):
        return {key: _dump(item) for key, item in value.items()}
    return value


def _load(hint: Any, value: Any, where: str, path: str) -> Any:
    """``value`` checked against the annotation ``hint`` and converted to it (lists to tuples, text to times)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        [inner] = [arg for arg in args if arg is not type(None)]
        return _load(inner, value, where, path)
    if origin is Literal:
        if value not in args:
            raise _wrong(where, path, " or ".join(repr(arg) for arg in args), value)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, path, "a list", value)
        return tuple(_load(args[0], item, where, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise _wrong(where, path, "an object", value)
        return {key: _load(args[1], item, where, f"{path}.{key}") for key, item in value.items()}
    if isinstance(hint, type) and issubclass(hint, Record):
        if not isinstance(value, dict):
            raise _wrong(where, path, f"an object ({hint.KIND})", value)
        if hint.SCHEMA_VERSION is not None and "schema_version" in value:  # a versioned record held in another
            value = dict(value)
            version = value.pop("schema_version")
            if version != hint.SCHEMA_VERSION:
                raise ContractError(f"{where}: {path} has schema_version {version!r}, not {hint.SCHEMA_VERSION}")
        return hint._build(value, where, path + ".")
    return _load_scalar(hint, value, where, path)


def _load_scalar(hint: Any, value: Any, where: str, path: str) -> Any:
    """A JSON scalar as the annotated type: an integer is never a bool, a time always has its UTC offset."""
    if hint is datetime:
        moment = None
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                pass
        if moment is None or moment.tzinfo is None:
            raise _wrong(where, path, "an ISO time with its UTC offset", value)
        return moment
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(hint)
    if expected is None:
        raise TypeError(f"records: no conversion for {hint!r} ({path})")  # a record declared with another type
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise _wrong(where, path, expected, value)
    return float(value) if hint is float else value


def _wrong(where: str, path: str, expected: str, value: Any) -> ContractError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return ContractError(f"{where}: field {path!r} should be {expected}, got {type(value).__name__} {shown}")
