"""Per-sensor anomaly models: training, a registry in blob storage, and loading that cannot run code.

A model is a StandardScaler + RBF OneClassSVM pipeline. Only its fitted arrays are stored (scaler mean and
scale, support vectors, dual coefficients, intercept, gamma), packed ``PACK_SIZE`` models to an ``.npz``
file and read back with ``allow_pickle=False``: loading is parsing numbers, never unpickling, so a planted
file cannot execute anything. Each model's arrays have a SHA-256 in the version's index, checked before use.

Registry layout in the models container::

    versions/<version>/manifest.json     version summary: feature set, params, library versions, packs, index
    versions/<version>/models.parquet    the per-model index: pack, row, sha256, training range, rows, metrics
    versions/<version>/pack-00000.npz    the arrays of up to PACK_SIZE models, sorted by (device_id, tag)
    versions/<version>/evaluation.parquet   per-sensor evaluation of the training DAG (candidate vs production)
    aliases/production.json              {"version": ...}: what the hourly DAG scores with (and why, when moved
                                         by the training DAG or a rollback: see ``models.promotion``)
    aliases/production-history.json      every move of the alias, newest last: the rollback path

A version records the feature set its models were trained on (``features``: a name from
``sensor_scoring.features``; versions from before sets had names list ``window-v1``'s columns), and is scored with
it: loaded models carry their version's set. The manifest's ``lineage`` (training DAG runs) names the training run,
data range, parameters and evaluation.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from sensor_scoring import features as feature_sets
from sensor_scoring.contracts import InvalidName, RegistryError
from sensor_scoring.names import check_version
from sensor_scoring.storage import Storage, parquet_bytes, parquet_frame

#: The alias the hourly DAG scores with unless told otherwise.
PRODUCTION_ALIAS = "production"
PACK_SIZE = 1000
ARRAY_FIELDS = ("mean", "scale", "gamma", "intercept", "sv_offsets", "sv", "dual")


class ModelIntegrityError(ValueError):
    """A stored model whose bytes do not match the registry's hash, or that is not plain numbers."""


class IndexMismatchError(RegistryError, ModelIntegrityError):
    """A version's index whose bytes do not match its manifest: the whole version is unusable, fail at once."""


@dataclass
class ModelArrays:
    """The fitted numbers of one pipeline: everything ``decision_function`` needs."""

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    support_vectors: np.ndarray  # (S, F), in scaled space
    dual_coef: np.ndarray  # (S,)
    intercept: float
    gamma: float
    #: a window is an anomaly where its decision value is <= threshold: 0 is scikit-learn's ``predict``; a model
    #: trained with ``threshold_mads`` has one calibrated on its training decision values (<= 0)
    threshold: float = 0.0
    #: the feature set (``sensor_scoring.features``) the model was trained on: what the scorer feeds it. Not hashed:
    #: it is the version's (manifest and index, the index hashed in the manifest), not the pack's
    features: str = feature_sets.WINDOW_V1

    def digest(self) -> str:
        """SHA-256 over a canonical byte layout, so the same model always hashes the same (a model without a
        calibrated threshold hashes as before thresholds existed)."""
        h = hashlib.sha256()
        scalars = [self.intercept, self.gamma] + ([self.threshold] if self.threshold != 0.0 else [])
        for part in (
            self.mean,
            self.scale,
            self.support_vectors,
            self.dual_coef,
            np.array(scalars),
        ):
            arr = np.ascontiguousarray(part, dtype="<f8")
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def scale_gamma(scaled: np.ndarray) -> float:
    """scikit-learn's ``gamma="scale"`` rule, 1 / (features * variance), computed here so the fitted
    value is an explicit, public parameter rather than the private ``_gamma``."""
    variance = float(scaled.var())
    return 1.0 / (scaled.shape[1] * variance) if variance > 0 else 1.0


def fit_pipeline(features: np.ndarray, *, nu: float = 0.02):
    """Fit StandardScaler + OneClassSVM on one sensor's feature matrix (rows x the set's columns)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    gamma = scale_gamma(StandardScaler().fit_transform(features))
    return make_pipeline(StandardScaler(), OneClassSVM(kernel="rbf", nu=nu, gamma=gamma)).fit(features)


def arrays_of(pipeline) -> ModelArrays:
    """Pull the fitted numbers out of a pipeline made by ``fit_pipeline``."""
    scaler, svm = pipeline[0], pipeline[-1]
    return ModelArrays(
        mean=np.asarray(scaler.mean_, dtype=float),
        scale=np.asarray(scaler.scale_, dtype=float),
        support_vectors=np.asarray(svm.support_vectors_, dtype=float),
        dual_coef=np.asarray(svm.dual_coef_, dtype=float).ravel(),
        intercept=float(svm.intercept_[0]),
        gamma=float(svm.gamma),
    )


def feature_matrix(windows: pd.DataFrame, feature_set: str = feature_sets.WINDOW_V1) -> np.ndarray:
    """The model input of each window for ``feature_set`` (``features.feature_matrix``), as float64."""
    return feature_sets.feature_matrix(windows, feature_set)


@dataclass
class TrainedModel:
    device_id: str
    tag: str
    pipeline: object
    arrays: ModelArrays
    rows: int
    train_start: str
    train_end: str
    flagged_share: float
    #: the OneClassSVM's nu (the run's, or the sensor's own with ``adaptive``); None where not recorded
    nu: float | None = None


def calibrated_threshold(decision: np.ndarray, mads: float | None) -> float:
    """The anomaly threshold of a model: 0 (scikit-learn's ``predict``) without ``mads``; else the median of its
    training decision values minus ``mads`` robust standard deviations (1.4826 x their median absolute deviation),
    capped at 0 so a calibrated model never flags more than ``predict`` would.

    Why: ``nu`` bounds the share of training windows outside the boundary (2%), and about as many ordinary
    windows fall outside it later: most of the flags. A threshold well below the training windows' usual values
    keeps the boundary's shape and flags only what lies far out. Median and MAD, not a low quantile: training
    windows include real anomalies, and a quantile would land among them (bench/bench_detection.py, docs/models.md).
    """
    if mads is None:
        return 0.0
    if not mads > 0:
        raise ValueError(f"threshold_mads must be above 0, got {mads}")
    median = float(np.median(decision))
    spread = 1.4826 * float(np.median(np.abs(decision - median)))
    return min(0.0, median - mads * spread)


#: ``adaptive_nu``: a training window is an outlier where one of its features lies this many robust deviations
#: (1.4826 x MAD) from the sensor's median; nu is twice the outlier share plus NU_MARGIN, within [nu, NU_MAX].
OUTLIER_MADS = 8.0
NU_MARGIN = 0.01
NU_MAX = 0.2


def adaptive_nu(matrix: np.ndarray, floor: float) -> float:
    """A sensor's nu from its own training windows: ``floor`` unless they hold more far-out windows than it allows.

    Why: nu bounds the share of training windows left outside the boundary; where history holds more anomalies
    than that (real history does), the boundary wraps some of them and they later score as normal. A robust count
    of far-out windows (median and MAD, which those windows barely move) estimates that share per sensor; clean
    sensors keep ``floor`` (bench/bench_detection.py, docs/models.md).
    """
    median = np.median(matrix, axis=0)
    spread = 1.4826 * np.median(np.abs(matrix - median), axis=0)
    far = np.abs(matrix - median) > OUTLIER_MADS * np.where(spread > 0, spread, np.inf)
    share = float(far.any(axis=1).mean())
    return float(min(max(2 * share + NU_MARGIN, floor), max(NU_MAX, floor)))


def train_models(
    windows: pd.DataFrame,
    *,
    nu: float = 0.02,
    min_rows: int = 30,
    threshold_mads: float | None = None,
    features: str = feature_sets.WINDOW_V1,
    adaptive: bool = False,
) -> list[TrainedModel]:
    """One pipeline per (device_id, tag) with at least ``min_rows`` windows, sorted by key.

    ``threshold_mads``: calibrate each model's anomaly threshold on its training decision values (see
    :func:`calibrated_threshold`); None keeps scikit-learn's ``predict`` (threshold 0). ``features``: the feature
    set (a set with derived columns needs them in ``windows``: ``features.add_features``). ``adaptive``: each
    sensor's nu from its own windows (:func:`adaptive_nu`, at least ``nu``), else ``nu`` for all.
    """
    feature_sets.columns(features)  # an unknown set fails before any fit
    trained = []
    for (device_id, tag), rows in windows.groupby(["device_id", "tag"], sort=True, observed=True):
        if len(rows) < min_rows:
            continue
        matrix = feature_matrix(rows, features)
        sensor_nu = adaptive_nu(matrix, nu) if adaptive else nu
        pipeline = fit_pipeline(matrix, nu=sensor_nu)
        decision = pipeline.decision_function(matrix)
        arrays = arrays_of(pipeline)
        arrays.threshold = calibrated_threshold(decision, threshold_mads)
        arrays.features = features
        trained.append(
            TrainedModel(
                device_id=str(device_id),
                tag=str(tag),
                pipeline=pipeline,
                arrays=arrays,
                rows=len(rows),
                train_start=rows["window_end"].min().isoformat(),
                train_end=rows["window_end"].max().isoformat(),
                flagged_share=float((decision <= arrays.threshold).mean()),
                nu=sensor_nu,
            )
        )
    return trained


def _pack_bytes(models: list[ModelArrays]) -> bytes:
    sizes = np.array([len(m.dual_coef) for m in models])
    arrays = {
        "mean": np.stack([m.mean for m in models]),
        "scale": np.stack([m.scale for m in models]),
        "gamma": np.array([m.gamma for m in models]),
        "intercept": np.array([m.intercept for m in models]),
        "sv_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "sv": np.concatenate([m.support_vectors for m in models]),
        "dual": np.concatenate([m.dual_coef for m in models]),
        "threshold": np.array([m.threshold for m in models]),
    }
    sink = io.BytesIO()
    np.savez(sink, allow_pickle=False, **arrays)  # numbers only; loading refuses pickles too
    return sink.getvalue()


def unpack(data: bytes) -> list[ModelArrays]:
    """Models of one pack; ``allow_pickle=False`` makes numpy refuse anything but plain arrays."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAY_FIELDS}
            # packs written before calibrated thresholds have none: threshold 0, scikit-learn's predict
            arrays["threshold"] = npz["threshold"] if "threshold" in npz.files else np.zeros(len(arrays["gamma"]))
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise ModelIntegrityError(f"model pack is not a plain-array pack: {exc}") from exc
    offsets = arrays["sv_offsets"]
    return [
        ModelArrays(
            mean=arrays["mean"][i],
            scale=arrays["scale"][i],
            support_vectors=arrays["sv"][offsets[i] : offsets[i + 1]],
            dual_coef=arrays["dual"][offsets[i] : offsets[i + 1]],
            intercept=float(arrays["intercept"][i]),
            gamma=float(arrays["gamma"][i]),
            threshold=float(arrays["threshold"][i]),
        )
        for i in range(len(arrays["gamma"]))
    ]


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
) -> dict[str, object]:
    """Write a version (packs, index, manifest), then move the alias if asked. Returns the manifest.

    ``lineage`` (the training run, data range, evaluation) goes into the manifest; ``evaluation`` (per-sensor
    metrics) is stored beside it as ``evaluation.parquet``.
    """
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
    for number, start in enumerate(range(0, len(trained), PACK_SIZE)):
        chunk = trained[start : start + PACK_SIZE]
        name = f"pack-{number:05d}.npz"
        data = _pack_bytes([m.arrays for m in chunk])
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
                }
            )
    index = pd.DataFrame(index_rows)
    index_bytes = parquet_bytes(index)
    storage.write_bytes(container, prefix + "models.parquet", index_bytes)
    if evaluation is not None:
        storage.write_bytes(container, prefix + "evaluation.parquet", parquet_bytes(evaluation))
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
    if lineage is not None:
        manifest["lineage"] = lineage
    storage.write_bytes(container, prefix + "manifest.json", json.dumps(manifest, indent=2).encode())
    if promote:
        set_alias(storage, container, PRODUCTION_ALIAS, version)
    return manifest


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


def read_manifest(storage: Storage, container: str, version: str) -> dict[str, object]:
    """A version's manifest; ``RegistryError`` if it has none or it is not JSON."""
    check_version(version)
    try:
        manifest: dict[str, object] = json.loads(storage.read_bytes(container, f"versions/{version}/manifest.json"))
    except FileNotFoundError:
        raise RegistryError(
            f"model version {version!r} has no manifest.json in container {container!r}; "
            f"{_existing(storage, container)}"
        ) from None
    except ValueError as exc:
        raise RegistryError(f"manifest of model version {version!r} is not JSON: {exc}") from None
    return manifest


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
    try:
        expected = manifest["index"]["sha256"]  # type: ignore[index]
    except (KeyError, TypeError):
        raise RegistryError(f"manifest of model version {version!r} names no index hash") from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise IndexMismatchError(
            f"model index of version {version!r} does not match its manifest hash; {_existing(storage, container)}"
        )
    return parquet_frame(data)


def load_models(
    storage: Storage, container: str, version: str, wanted: pd.DataFrame
) -> tuple[dict[tuple[str, str], ModelArrays], dict[tuple[str, str], str]]:
    """Load the models listed in ``wanted`` (columns device_id, tag, pack, row, sha256).

    Each pack is read once however many of its models are wanted, so a shard of thousands of sensors costs
    a few storage reads. Returns the verified models, each carrying its version's feature set, and, for the rest,
    the reason they cannot be used.
    """
    feature_set = version_features(read_manifest(storage, container, version))
    models: dict[tuple[str, str], ModelArrays] = {}
    refused: dict[tuple[str, str], str] = {}
    for pack, rows in wanted.groupby("pack", sort=True):
        try:
            unpacked = unpack(storage.read_bytes(container, f"versions/{version}/{pack}"))
        except FileNotFoundError:
            unpacked, reason = None, "model_missing"
        except ModelIntegrityError:
            unpacked, reason = None, "model_unreadable"
        for device_id, tag, row, sha in rows[["device_id", "tag", "row", "sha256"]].itertuples(index=False):
            key = (device_id, tag)
            if unpacked is None:
                refused[key] = reason
            elif row >= len(unpacked):
                refused[key] = "model_missing"
            elif unpacked[row].digest() != sha:
                refused[key] = "model_hash_mismatch"
            else:
                models[key] = unpacked[row]
                models[key].features = feature_set
    return models, refused
