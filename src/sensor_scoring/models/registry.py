"""The model registry in blob storage: versions, their manifests and indexes, aliases, and loading that cannot run code.

A model is a StandardScaler + RBF OneClassSVM pipeline. Only its fitted arrays are stored (scaler mean and
scale, support vectors, dual coefficients, intercept, gamma), packed ``pack.PACK_SIZE`` models to an ``.npz``
file and read back with ``allow_pickle=False``: loading is parsing numbers, never unpickling, so a planted
file cannot execute anything. Each model's arrays have a SHA-256 in the version's index, checked before use.

Registry layout in the models container::

    versions/<version>/manifest.json     version summary: feature set, params, library versions, packs, index
    versions/<version>/models.parquet    the per-model index: pack, row, sha256, training range, rows, metrics
    versions/<version>/pack-00000.npz    the arrays of up to PACK_SIZE models, sorted by (device_id, tag)
    versions/<version>/evaluation.parquet   per-sensor evaluation of the training DAG (candidate vs production)
    versions/<version>/skipped.parquet      the sensors of the training data without a model, and why
    aliases/production.json              {"version": ...}: what the hourly DAG scores with (and why, when moved
                                         by the training DAG or a rollback: see ``models.promotion``)
    aliases/production-history.json      every move of the alias, newest last: the rollback path

A version records the feature set its models were trained on (``features``: a name from
``sensor_scoring.features``; versions from before sets had names list ``window-v1``'s columns), and is scored with
it: loaded models carry their version's set. The manifest's ``lineage`` (training DAG runs) names the training run,
data range, parameters and evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from sensor_scoring import features as feature_sets
from sensor_scoring.contracts import InvalidName, RegistryError
from sensor_scoring.models import pack
from sensor_scoring.models.fitting import TrainedModel
from sensor_scoring.names import check_version
from sensor_scoring.records import ContractError, Record
from sensor_scoring.scorer import ModelArrays
from sensor_scoring.storage import Storage, parquet_bytes, parquet_frame

#: The alias the hourly DAG scores with unless told otherwise.
PRODUCTION_ALIAS = "production"


@dataclasses.dataclass(frozen=True)
class IndexFile(Record):
    """The version's per-model index and the SHA-256 of its bytes."""

    KIND: ClassVar[str] = "index entry"
    file: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class PackFile(Record):
    """One pack of the version: its file, how many models it holds, the SHA-256 of its bytes."""

    KIND: ClassVar[str] = "pack entry"
    file: str
    models: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class VersionManifest(Record):
    """``versions/<version>/manifest.json``: what a version holds and where it came from.

    ``features`` is a set's name (``sensor_scoring.features``), or, in versions from before sets had names, the
    list of ``window-v1``'s columns. ``lineage`` (versions of the training DAG: run, data range, params, the gate's
    verdict ``models.promotion.GateVerdict`` under ``evaluation``) is absent from versions registered otherwise.
    Manifests written before they carried ``schema_version`` read as version 1: the fields were the same.
    """

    KIND: ClassVar[str] = "model version manifest"
    SCHEMA_VERSION: ClassVar[int | None] = 1
    version: str
    created_at: str
    format: str
    features: Any
    params: dict[str, Any]
    libraries: dict[str, str]
    models: int
    train_start: str
    train_end: str
    index: IndexFile
    packs: tuple[PackFile, ...]
    feature_columns: tuple[str, ...] = ()
    lineage: dict[str, Any] | None = None
    #: sensors of the training data without a model, counted by reason (``fitting.SKIP_REASONS``); the sensors are
    #: in ``skipped.parquet``. Absent from versions registered before skip rules
    skipped: dict[str, int] | None = None

    @classmethod
    def from_dict(cls, data: object, source: str) -> VersionManifest:
        if isinstance(data, dict) and "schema_version" not in data:
            data = {**data, "schema_version": 1}  # written before manifests were versioned: the same fields
        return super().from_dict(data, source)


class IndexMismatchError(RegistryError, pack.ModelIntegrityError):
    """A version's index whose bytes do not match its manifest: the whole version is unusable, fail at once."""


def _library_versions() -> dict[str, str]:
    import sklearn

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
    }


def new_version_name(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("v%Y%m%dT%H%M%SZ")


def register(
    storage: Storage,
    container: str,
    trained: list[TrainedModel],
    *,
    version: str,
    params: dict[str, object],
    promote: bool,
    lineage: dict[str, object] | None = None,
    evaluation: pd.DataFrame | None = None,
    skipped: pd.DataFrame | None = None,
    carried: dict[tuple[str, str], str] | None = None,
) -> dict[str, object]:
    """Write a version (packs, index, manifest), then move the alias if asked. Returns the manifest.

    ``lineage`` (the training run, data range, evaluation) goes into the manifest; ``evaluation`` (per-sensor
    metrics) is stored beside it as ``evaluation.parquet``; ``skipped`` (device_id, tag, reason: the sensors of the
    training data without a model, ``fitting.SKIP_REASONS``) as ``skipped.parquet``, counted by reason in the
    manifest's ``skipped``. ``carried``: the models taken over unchanged from another version (sensor -> that
    version), named in the index's ``carried_from`` column.
    """
    carried = carried or {}
    check_version(version)
    if not trained:
        raise ValueError("no models to register: no sensor had enough training windows")
    sets = sorted({m.arrays.features for m in trained})
    if len(sets) != 1:
        raise ValueError(f"a version has one feature set; these models were trained on {sets}")
    feature_set = sets[0]
    prefix = f"versions/{version}/"
    if storage.list(container, prefix):
        raise FileExistsError(f"model version {version} already exists; versions are immutable")
    index_rows, packs = [], []
    for number, start in enumerate(range(0, len(trained), pack.PACK_SIZE)):
        chunk = trained[start : start + pack.PACK_SIZE]
        name = f"pack-{number:05d}.npz"
        data = pack.pack_bytes([m.arrays for m in chunk])
        storage.write_bytes(container, prefix + name, data)
        packs.append({"file": name, "models": len(chunk), "sha256": hashlib.sha256(data).hexdigest()})
        for row, model in enumerate(chunk):
            index_rows.append(
                {
                    "device_id": model.device_id,
                    "tag": model.tag,
                    "pack": name,
                    "row": row,
                    "sha256": model.arrays.digest(),
                    "features": feature_set,
                    "train_start": model.train_start,
                    "train_end": model.train_end,
                    "train_rows": model.rows,
                    "support_vectors": len(model.arrays.dual_coef),
                    "train_flagged_share": model.flagged_share,
                    "nu": model.nu,
                    "false_alarm_rate": model.false_alarm_rate,
                    "calibration_windows": model.calibration_windows,
                    "carried_from": carried.get((model.device_id, model.tag)),
                }
            )
    index = pd.DataFrame(index_rows)
    index_bytes = parquet_bytes(index)
    storage.write_bytes(container, prefix + "models.parquet", index_bytes)
    if evaluation is not None:
        storage.write_bytes(container, prefix + "evaluation.parquet", parquet_bytes(evaluation))
    if skipped is not None:
        storage.write_bytes(container, prefix + "skipped.parquet", parquet_bytes(skipped))
    manifest = {
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "format": "npz-arrays-v1 (StandardScaler + OneClassSVM rbf; loaded with allow_pickle=False)",
        "features": feature_set,
        "feature_columns": list(feature_sets.columns(feature_set)),
        "params": params,
        "libraries": _library_versions(),
        "models": len(index),
        "train_start": min(m.train_start for m in trained),
        "train_end": max(m.train_end for m in trained),
        "index": {"file": "models.parquet", "sha256": hashlib.sha256(index_bytes).hexdigest()},
        "packs": packs,
    }
    if skipped is not None:
        manifest["skipped"] = {str(k): int(v) for k, v in skipped["reason"].value_counts(sort=False).items()}
    if lineage is not None:
        manifest["lineage"] = json.loads(json.dumps(lineage, default=str))  # plain JSON, as it will be read
    record = VersionManifest.from_dict(manifest, source=f"the registration of {version}")
    storage.write_bytes(container, prefix + "manifest.json", record.to_json(indent=2))
    if promote:
        set_alias(storage, container, PRODUCTION_ALIAS, version)
    return record.to_dict()


def set_alias(
    storage: Storage, container: str, alias: str, version: str, note: dict[str, object] | None = None
) -> None:
    """Point ``alias`` at ``version``; ``note`` (who moved it and why) is kept in the alias blob."""
    if not storage.exists(container, f"versions/{version}/manifest.json"):
        raise FileNotFoundError(f"model version {version} is not registered")
    body = {"version": version, "set_at": datetime.now(timezone.utc).isoformat(), **(note or {})}
    storage.write_bytes(container, f"aliases/{alias}.json", json.dumps(body).encode())


def list_versions(storage: Storage, container: str) -> list[str]:
    """The registered versions: those with a ``manifest.json`` (written last by ``register``)."""
    names = {info.name.split("/")[1] for info in storage.list(container, "versions/") if info.name.count("/") >= 2}
    return sorted(n for n in names if storage.exists(container, f"versions/{n}/manifest.json"))


def _existing(storage: Storage, container: str) -> str:
    versions = list_versions(storage, container)
    return f"existing versions: {', '.join(versions)}" if versions else "no version is registered"


def resolve_version(storage: Storage, container: str, name: str) -> str:
    """An alias (``production``) or a version name -> the version name.

    Registry faults are configuration, not transient: ``RegistryError`` (no retries) naming the alias, the
    version it points at and the versions that exist."""
    try:
        check_version(name)
    except InvalidName as exc:
        raise RegistryError(str(exc)) from None
    try:
        alias = storage.read_bytes(container, f"aliases/{name}.json")
    except FileNotFoundError:
        alias = None
    if alias is not None:
        try:
            version = check_version(json.loads(alias)["version"], f"version of alias {name!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(
                f"model alias {name!r} in container {container!r} is unreadable ({exc}); "
                f"{_existing(storage, container)}"
            ) from None
        if not storage.exists(container, f"versions/{version}/manifest.json"):
            raise RegistryError(
                f"model alias {name!r} points at version {version!r}, which has no manifest in container "
                f"{container!r}; {_existing(storage, container)}. Point the alias at an existing version"
            )
        return version
    if storage.exists(container, f"versions/{name}/manifest.json"):
        return name
    raise RegistryError(
        f"no model alias or version named {name!r} in container {container!r} ({_existing(storage, container)}); "
        "train and promote models first: python -m sensor_scoring train --start ... --end ... --promote"
    )


def read_version_manifest(storage: Storage, container: str, version: str) -> VersionManifest:
    """A version's manifest, checked field by field; ``RegistryError`` if it has none, or it is not JSON or not
    a manifest (naming the field)."""
    check_version(version)
    path = f"versions/{version}/manifest.json"
    try:
        data = storage.read_bytes(container, path)
    except FileNotFoundError:
        raise RegistryError(
            f"model version {version!r} has no manifest.json in container {container!r}; "
            f"{_existing(storage, container)}"
        ) from None
    try:
        return VersionManifest.from_json(data, source=f"{container}/{path}")
    except ContractError as exc:
        raise RegistryError(f"manifest of model version {version!r} is unreadable: {exc}") from None


def read_manifest(storage: Storage, container: str, version: str) -> dict[str, object]:
    """A version's manifest (:func:`read_version_manifest`) as plain JSON values."""
    return read_version_manifest(storage, container, version).to_dict()


def version_features(manifest: dict[str, object]) -> str:
    """The feature set a version's manifest records (``features.recorded_set``); ``RegistryError`` if unknown."""
    try:
        return feature_sets.recorded_set(manifest.get("features"))
    except ValueError as exc:
        raise RegistryError(f"model version {manifest.get('version')!r}: {exc}") from None


def read_index(storage: Storage, container: str, version: str) -> pd.DataFrame:
    """The per-model table of a version, checked against the hash in its manifest (``RegistryError`` if it is
    missing or does not match: a configuration fault, failed at once)."""
    manifest = read_manifest(storage, container, version)
    try:
        data = storage.read_bytes(container, f"versions/{version}/models.parquet")
    except FileNotFoundError:
        raise RegistryError(
            f"model version {version!r} has a manifest but no index (models.parquet) in container {container!r}; "
            f"{_existing(storage, container)}"
        ) from None
    expected = manifest["index"]["sha256"]  # type: ignore[index]
    if hashlib.sha256(data).hexdigest() != expected:
        raise IndexMismatchError(
            f"model index of version {version!r} does not match its manifest hash; {_existing(storage, container)}"
        )
    return parquet_frame(data)


def fits(arrays: ModelArrays, width: int) -> bool:
    """Whether a model's arrays take ``width`` features: its scaler and support vectors agree on that width."""
    sv = np.asarray(arrays.support_vectors)
    return (
        np.shape(arrays.mean) == (width,)
        and np.shape(arrays.scale) == (width,)
        and sv.ndim == 2
        and sv.shape[1] == width
        and np.shape(arrays.dual_coef) == (sv.shape[0],)
    )


def load_models(
    storage: Storage, container: str, version: str, wanted: pd.DataFrame
) -> tuple[dict[tuple[str, str], ModelArrays], dict[tuple[str, str], str]]:
    """Load the models listed in ``wanted`` (columns device_id, tag, pack, row, sha256).

    Each pack is read once however many of its models are wanted, so a shard of thousands of sensors costs
    a few storage reads. Returns the verified models, each carrying its version's feature set, and, for the rest,
    the reason they cannot be used: ``model_unreadable`` too for a model whose input width is not its version's
    feature set's (it could not be scored with the others).
    """
    feature_set = version_features(read_manifest(storage, container, version))
    width = len(feature_sets.columns(feature_set))
    models: dict[tuple[str, str], ModelArrays] = {}
    refused: dict[tuple[str, str], str] = {}
    for pack_file, rows in wanted.groupby("pack", sort=True):
        try:
            unpacked = pack.unpack(storage.read_bytes(container, f"versions/{version}/{pack_file}"))
        except FileNotFoundError:
            unpacked, reason = None, "model_missing"
        except pack.ModelIntegrityError:
            unpacked, reason = None, "model_unreadable"
        for device_id, tag, row, sha in rows[["device_id", "tag", "row", "sha256"]].itertuples(index=False):
            key = (device_id, tag)
            if unpacked is None:
                refused[key] = reason
            elif row >= len(unpacked):
                refused[key] = "model_missing"
            elif unpacked[row].digest() != sha:
                refused[key] = "model_hash_mismatch"
            elif not fits(unpacked[row], width):
                refused[key] = "model_unreadable"  # cannot be fed its version's features: scored, it would fail all
            else:
                models[key] = unpacked[row]
                models[key].features = feature_set
    return models, refused
