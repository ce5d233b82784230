"""The training DAG's steps: gather, train a shard, evaluate, register, promote or not.

Gathering reads the range by the scoring runs' own rules: ``windows.read_owned`` (ownership, late folders, corrupt
files set aside), the rescoring subset selection, and the great-expectations suite (``validation.check_windows``);
quarantined windows are not trained on. The last ``holdout_hours`` of the range are held back: the candidate and
production are evaluated on them (``models.evaluation``). The candidate the gate judges is fit on the hours before
them; with ``refit`` (the default) the version registers the same procedure fit again on the whole range, held-back
hours included, so its models have seen the newest hours of their range, as the detection benchmark's models and the
leave-one-source-out choice of the defaults have (docs/models.md). Training runs in shards of
``sensors_per_shard`` sensors, each in its own process (``python -m sensor_scoring train-shard --spec <uri>``), so a
shard's memory is its own sensors' windows and models. Features (``sensor_scoring.features``) are derived once, in
gather, over the whole range with the hour before it as lookback, as scoring derives them: held-back windows get the
same values an hourly run would give them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sensor_scoring import features as feature_sets, layout, storage as st
from sensor_scoring.contracts import (
    REASON_COLUMN,
    PlannedShard,
    ShardContainers,
    SkippedSensor,
    TrainingShardResult,
    TrainingShardSpec,
)
from sensor_scoring.layout import HOUR
from sensor_scoring.models import evaluation, fitting, pack, promotion, registry, stats
from sensor_scoring.names import check_sensor_names
from sensor_scoring.runs.common import names_storage_outages
from sensor_scoring.runs.rescoring import subset_of
from sensor_scoring.runs.scope import Scope
from sensor_scoring.scorer import ModelArrays
from sensor_scoring.storage import Storage

log = logging.getLogger(__name__)
KEY = ["device_id", "tag"]


class NoTrainingData(ValueError):
    """The range holds no valid window to train on: a configuration error for a run that named its range, and
    nothing to do for a scheduled run over a week with no data (the training DAG skips it)."""


@names_storage_outages
def gather(
    run: Scope,
    *,
    holdout_hours: int,
    sensors_per_shard: int,
    nu: float,
    min_rows: int,
    threshold_mads: float | None = None,
    devices: list[str] | None = None,
    tags: list[str] | None = None,
    late_folders: int = 1,
    features: str = feature_sets.DEFAULT_FEATURE_SET,
    adaptive_nu: bool = fitting.DEFAULT_ADAPTIVE_NU,
    false_alarm_rate: float | None = None,
    refit: bool = True,
) -> list[PlannedShard]:
    """Valid windows of [start, end): the last ``holdout_hours`` staged for evaluation, the rest in training shards
    (for models of feature set ``features``, with each sensor's own nu if ``adaptive_nu``, each threshold
    calibrated for ``false_alarm_rate``). With ``refit``, each shard's input also holds its sensors' held-back
    windows, for the models the version registers (``train_shard``)."""
    from sensor_scoring.steps.load import read_range

    if sensors_per_shard < 1:
        raise ValueError("sensors_per_shard must be at least 1")
    feature_sets.columns(features)  # an unknown set fails before anything is read
    if false_alarm_rate is not None and threshold_mads is not None:
        raise ValueError("give false_alarm_rate or threshold_mads, not both (empty the other)")
    devices, tags = check_sensor_names(devices, "devices"), check_sensor_names(tags, "tags")
    cut = run.end - holdout_hours * HOUR
    if cut <= run.start:
        raise ValueError(
            f"holdout_hours {holdout_hours} leaves no training hour in [{run.start.isoformat()}, {run.end.isoformat()})"
        )
    # the hourly run's own reading (ownership, strays, rejected rows, subset, suite, features), in this process;
    # strays and quarantined rows are never trained on, as never scored
    read = read_range(run, late_folders=late_folders, subset=subset_of(devices, tags))
    for r in read.reads:
        for corrupt in r.corrupt_files:
            log.warning("Not training on corrupt file %s (%d bytes): %s", corrupt.file, corrupt.bytes, corrupt.error)
    quarantined = read.quarantined
    reasons = Counter(str(r) for r in quarantined[REASON_COLUMN]) if len(quarantined) else Counter()
    valid = read.valid
    held = valid["window_end"] >= pd.Timestamp(cut)
    train, holdout = valid.loc[~held], valid.loc[held]
    log.info(
        "Range [%s, %s): %d valid window(s) from %d file(s), %d quarantined %s (not trained on); %d for training "
        "before %s, %d held back",
        run.start.isoformat(),
        run.end.isoformat(),
        len(valid),
        read.files,
        len(quarantined),
        dict(reasons),
        len(train),
        cut.isoformat(),
        len(holdout),
    )
    if train.empty:
        raise NoTrainingData(
            f"no valid window to train on in [{run.start.isoformat()}, {cut.isoformat()}) of container "
            f"{run.containers.windows!r}: check the range, devices/tags and holdout_hours"
        )
    plan = layout.TrainingRun(run.run_key)
    run.storage.write_bytes(run.containers.staging, plan.holdout, st.parquet_bytes(holdout.reset_index(drop=True)))
    sensors = train[KEY].drop_duplicates().sort_values(KEY).reset_index(drop=True)
    sensors["shard"] = np.arange(len(sensors)) // sensors_per_shard
    # a refit trains the sensors the gate judges (those with training windows) on their whole range
    refitting = refit and not holdout.empty
    with_shard = (valid if refitting else train).merge(sensors, on=KEY)
    shards = []
    for number, rows in with_shard.groupby("shard", sort=True):
        members = sensors.loc[sensors["shard"] == number]
        shards.append(
            _stage(
                run,
                plan,
                int(number),
                rows.drop(columns="shard"),
                members,
                nu,
                min_rows,
                threshold_mads,
                features,
                adaptive_nu,
                false_alarm_rate,
                cut.isoformat() if refitting else None,
            )
        )
    return shards


def _stage(
    run: Scope,
    plan: layout.TrainingRun,
    number: int,
    rows: pd.DataFrame,
    members: pd.DataFrame,
    nu: float,
    min_rows: int,
    threshold_mads: float | None,
    features: str,
    adaptive_nu: bool,
    false_alarm_rate: float | None = None,
    held_back_from: str | None = None,
) -> PlannedShard:
    from sensor_scoring.steps.plan import shard_label

    staging, shard = run.containers.staging, plan.shard(number)
    run.storage.write_bytes(staging, shard.input, st.parquet_bytes(rows.reset_index(drop=True)))
    spec = TrainingShardSpec(
        run_id=run.run_id,
        shard=number,
        containers=ShardContainers(models=run.containers.models, staging=staging),
        input=st.make_uri(staging, shard.input),
        output_prefix=st.make_uri(staging, shard.folder),
        nu=nu,
        min_rows=min_rows,
        threshold_mads=threshold_mads,
        features=features,
        adaptive_nu=adaptive_nu,
        false_alarm_rate=false_alarm_rate,
        held_back_from=held_back_from,
    )
    run.storage.write_bytes(staging, shard.spec, spec.to_json())
    return PlannedShard(
        spec_uri=st.make_uri(staging, shard.spec),
        shard=number,
        sensors=len(members),
        windows=len(rows),
        label=shard_label(number, members.reset_index(drop=True)),
    )


@names_storage_outages
def train_shard(storage: Storage, spec_uri: str) -> TrainingShardResult:
    """Fit one model per sensor of the shard and write them (pack + index) beside the spec; result.json last.

    With a refit (the spec's ``held_back_from``): first the models the gate judges, on the windows before the
    held-back hours (``judged_pack``), then, for the sensors that got one, the models the version registers, on
    every window of the input with the same parameters (``pack``)."""
    container, path = st.parse_uri(spec_uri)
    spec = TrainingShardSpec.from_json(storage.read_bytes(container, path), source=spec_uri)
    windows = st.read_parquet(storage, *st.parse_uri(spec.input))
    input_windows = len(windows)
    options: dict[str, Any] = {
        "nu": spec.nu,
        "min_rows": spec.min_rows,
        "threshold_mads": spec.threshold_mads,
        "features": spec.features,
        "adaptive": spec.adaptive_nu,
        "false_alarm_rate": spec.false_alarm_rate,
    }
    out_container, prefix = st.parse_uri(spec.output_prefix)
    shard = layout.TrainingShard(prefix)
    judged_models = None
    if spec.held_back_from is None:
        trained, skipped = fitting.fit_sensors(windows, **options)
    else:
        before = windows["window_end"] < pd.Timestamp(spec.held_back_from)
        judged, skipped = fitting.fit_sensors(windows.loc[before], **options)
        _write_models(storage, out_container, shard.judged_pack, shard.judged_index, judged)
        judged_models = len(judged)
        del judged
        # only the sensors the gate judges are registered: a sensor too short before the held-back hours stays
        # skipped with its reason rather than getting a model nobody evaluated
        if skipped:
            unjudged = pd.MultiIndex.from_tuples([(s.device_id, s.tag) for s in skipped])
            windows = windows.loc[~pd.MultiIndex.from_frame(windows[KEY]).isin(unjudged)]
        trained, refit_skipped = fitting.fit_sensors(windows, **options)
        skipped = sorted(skipped + refit_skipped, key=lambda s: (s.device_id, s.tag))
    _write_models(storage, out_container, shard.pack, shard.index, trained)
    # model health compares each hour with these: computed here, where the shard's windows are in memory
    storage.write_bytes(out_container, shard.stats, st.parquet_bytes(stats.statistics_table(trained, windows)))
    result = TrainingShardResult(
        shard=spec.shard,
        output_prefix=spec.output_prefix,
        models=len(trained),
        sensors=len(trained) + len(skipped),
        windows=input_windows,
        skipped=tuple(f"{s.device_id}/{s.tag}" for s in skipped),
        skipped_sensors=tuple(SkippedSensor(s.device_id, s.tag, s.reason) for s in skipped),
        judged_models=judged_models,
    )
    storage.write_bytes(out_container, shard.result, result.to_json())
    return result


_INDEX_COLUMNS = [
    "device_id",
    "tag",
    "train_start",
    "train_end",
    "train_rows",
    "train_flagged_share",
    "features",
    "nu",
    "false_alarm_rate",
    "calibration_windows",
]


def _write_models(
    storage: Storage, container: str, pack_path: str, index_path: str, trained: list[fitting.TrainedModel]
) -> None:
    """Fitted models as a pack (none without a model) and their index, one row per model in the pack's order."""
    if trained:
        storage.write_bytes(container, pack_path, pack.pack_bytes([m.arrays for m in trained]))
    index = pd.DataFrame(
        [
            {
                "device_id": m.device_id,
                "tag": m.tag,
                "train_start": m.train_start,
                "train_end": m.train_end,
                "train_rows": m.rows,
                "train_flagged_share": m.flagged_share,
                "features": m.arrays.features,
                "nu": m.nu,
                "false_alarm_rate": m.false_alarm_rate,
                "calibration_windows": m.calibration_windows,
            }
            for m in trained
        ],
        columns=_INDEX_COLUMNS,
    )
    storage.write_bytes(container, index_path, st.parquet_bytes(index))


def read_training_result(storage: Storage, output_prefix: str) -> dict[str, object]:
    """The result.json a training shard wrote under ``output_prefix`` (an URI), checked, in its XCom form."""
    container, prefix = st.parse_uri(output_prefix)
    path = layout.Shard(prefix).result
    return TrainingShardResult.from_json(
        storage.read_bytes(container, path), source=st.make_uri(container, path)
    ).to_dict()


def load_trained(
    storage: Storage, results: list[TrainingShardResult], *, judged: bool = False
) -> list[fitting.TrainedModel]:
    """The fitted models of every shard, in key order, as ``registry.register`` takes them; ``judged``: the models
    the gate judges (the same as the registered ones where a shard did not refit)."""
    trained: list[fitting.TrainedModel] = []
    for result in sorted(results, key=lambda r: r.shard):
        container, prefix = st.parse_uri(result.output_prefix)
        shard = layout.TrainingShard(prefix)
        refit = judged and result.judged_models is not None
        models = result.judged_models if refit else result.models
        if not models:
            continue
        pack_path, index_path = (shard.judged_pack, shard.judged_index) if refit else (shard.pack, shard.index)
        arrays = pack.unpack(storage.read_bytes(container, pack_path))
        index = st.read_parquet(storage, container, index_path)
        if len(index) != len(arrays) or len(arrays) != models:
            raise pack.ModelIntegrityError(f"training shard {result.shard}: pack and index disagree on the models")
        for row, fitted in zip(index.itertuples(index=False), arrays, strict=True):
            fitted.features = str(row.features)
            trained.append(
                fitting.TrainedModel(
                    device_id=str(row.device_id),
                    tag=str(row.tag),
                    pipeline=None,
                    arrays=fitted,
                    rows=int(row.train_rows),
                    train_start=str(row.train_start),
                    train_end=str(row.train_end),
                    flagged_share=float(row.train_flagged_share),
                    nu=float(row.nu),
                    false_alarm_rate=_optional(getattr(row, "false_alarm_rate", None)),
                    calibration_windows=int(getattr(row, "calibration_windows", 0)),
                )
            )
    return sorted(trained, key=lambda m: (m.device_id, m.tag))


def _optional(value: object) -> float | None:
    """A float column's value, None where it is null (a model without a calibrated rate)."""
    return None if value is None or pd.isna(value) else float(value)  # type: ignore[arg-type]


def skipped_table(results: list[TrainingShardResult]) -> pd.DataFrame:
    """The sensors of the training data without a model and why (``device_id, tag, reason``), in key order."""
    rows = []
    for r in results:
        if r.skipped_sensors or not r.skipped:
            rows += [{"device_id": s.device_id, "tag": s.tag, "reason": s.reason} for s in r.skipped_sensors]
        else:  # written before reasons were recorded: skipped for too few windows, keyed ``device_id/tag``
            rows += [dict(zip(KEY, key.split("/", 1), strict=True), reason="too_few_windows") for key in r.skipped]
    return pd.DataFrame(rows, columns=["device_id", "tag", "reason"]).sort_values(KEY, ignore_index=True)


@dataclass(frozen=True)
class _Production:
    """The baseline version a candidate is judged against: its name, feature set, index and loaded models of
    the held-back sensors, and how many of those sensors' models it leaves out because they were fit on their
    held-back windows."""

    version: str
    features: str
    index: pd.DataFrame
    models: dict[tuple[str, str], ModelArrays]
    fit_on_held_back: int = 0


def _production_models(run: Scope, windows: pd.DataFrame, baseline: str) -> _Production | None:
    """The baseline version's models of the held-back sensors that never saw their held-back windows; None before
    any version is promoted."""
    try:
        version = registry.resolve_version(run.storage, run.containers.models, baseline)
    except LookupError:
        log.info("No %r version yet: the candidate is judged on its own", baseline)
        return None
    features = registry.version_features(registry.read_manifest(run.storage, run.containers.models, version))
    index = registry.read_index(run.storage, run.containers.models, version)
    wanted = index.merge(windows[KEY].drop_duplicates(), on=KEY)
    wanted, seen = _not_fit_on(wanted, windows)
    if seen:
        log.warning(
            "Production %s: %d model(s) were fit on held-back windows of their sensor; not compared on them",
            version,
            seen,
        )
    loaded, refused = registry.load_models(run.storage, run.containers.models, version, wanted)
    if refused:
        log.warning(
            "Production %s: %d model(s) unusable, not compared: %s",
            version,
            len(refused),
            dict(list(refused.items())[:5]),
        )
    return _Production(version, features, index, loaded, seen)


def _not_fit_on(wanted: pd.DataFrame, windows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The index rows ``wanted`` without the models whose training ended at or after their sensor's first held-back
    window (a version trained on an overlapping range, refit on its whole range): judged on windows it saw,
    production would win the F1 comparison unfairly. Coverage still counts those sensors. Also how many."""
    if wanted.empty or "train_end" not in wanted.columns:
        return wanted, 0
    first = windows.groupby(KEY, sort=False)["window_end"].min().rename("first_held_back").reset_index()
    wanted = wanted.reset_index(drop=True)
    held = wanted[KEY].merge(first, on=KEY, how="left")["first_held_back"]
    seen = (pd.to_datetime(wanted["train_end"], utc=True, errors="coerce") >= held).to_numpy()
    return wanted.loc[~seen].reset_index(drop=True), int(seen.sum())


def _one_feature_set(models: dict[tuple[str, str], ModelArrays]) -> str:
    sets = sorted({m.features for m in models.values()})
    if len(sets) != 1:
        raise ValueError(f"a version has one feature set; these models were trained on {sets}")
    return sets[0]


@names_storage_outages
def evaluate(
    run: Scope,
    results: list[TrainingShardResult],
    policy: promotion.Policy,
    *,
    baseline: str = registry.PRODUCTION_ALIAS,
) -> dict[str, object]:
    """Judge the candidate against the baseline on the held-back windows and labels; stage the verdict.

    Returns the evaluation (fleet metrics of both, the policy and its decision with reasons), also staged as
    ``evaluation.json``; the per-sensor table is staged as ``evaluation.parquet``.
    """
    plan, staging = layout.TrainingRun(run.run_key), run.containers.staging
    windows = st.read_parquet(run.storage, staging, plan.holdout)
    candidate = {(m.device_id, m.tag): m.arrays for m in load_trained(run.storage, results, judged=True)}
    if not candidate:
        raise ValueError("no sensor had enough valid training windows for a model (see min_rows): nothing to evaluate")
    first = windows["window_end"].min().floor("h").to_pydatetime() if len(windows) else run.end
    labels, labelled = evaluation.read_labels(run.storage, run.containers.labels, first, run.end)
    production = _production_models(run, windows, baseline)
    summary, table = evaluation.compare(
        windows, candidate, None if production is None else production.models, labels, labelled
    )
    summary["coverage"] = promotion.coverage(
        candidate,
        _one_feature_set(candidate),
        [] if production is None else list(production.index[KEY].itertuples(index=False, name=None)),
        None if production is None else production.version,
        None if production is None else production.features,
    )
    ok, reasons = promotion.decide(summary, policy)
    record = promotion.GateVerdict.from_dict(
        {
            **summary,
            "production_version": None if production is None else production.version,
            "production_fit_on_held_back": 0 if production is None else production.fit_on_held_back,
            "policy": policy.to_dict(),
            "promotable": ok,
            "reasons": reasons,
        },
        source="the gate's evaluation",
    )
    run.storage.write_bytes(staging, plan.evaluation, record.to_json(indent=2))
    run.storage.write_bytes(staging, plan.evaluation_table, st.parquet_bytes(table))
    verdict = record.to_dict()
    log.info(
        "Evaluation: %s", json.dumps({k: verdict[k] for k in ("candidate", "production", "promotable", "reasons")})
    )
    return verdict


@names_storage_outages
def register(
    run: Scope,
    results: list[TrainingShardResult],
    *,
    version: str,
    params: dict[str, object],
    data_range: dict[str, object],
) -> dict[str, object]:
    """Register the candidate as ``version`` (not promoted) with its lineage and the staged evaluation."""
    plan, staging = layout.TrainingRun(run.run_key), run.containers.staging
    verdict = promotion.GateVerdict.from_json(
        run.storage.read_bytes(staging, plan.evaluation), source=st.make_uri(staging, plan.evaluation)
    ).to_dict()
    table = st.read_parquet(run.storage, staging, plan.evaluation_table)
    lineage = {
        "training_run": run.run_id,
        "data_range": data_range,
        "params": params,
        "evaluation": verdict,
        "shards": len(results),
        "skipped_sensors": sum(len(r.skipped) for r in results),
    }
    trained = load_trained(run.storage, results)
    coverage = verdict.get("coverage") or {}
    carried, carried_stats = _carry(run, coverage, trained)
    if carried:
        lineage["carried"] = {"from": coverage["carried_from"], "models": len(carried)}
    manifest = registry.register(
        run.storage,
        run.containers.models,
        sorted(trained + carried, key=lambda m: (m.device_id, m.tag)),
        version=version,
        params=params,
        promote=False,
        lineage=lineage,
        evaluation=table,
        skipped=skipped_table(results),
        carried={(m.device_id, m.tag): str(coverage["carried_from"]) for m in carried},
    )
    tables = [] if carried_stats is None else [carried_stats]
    for result in results:
        if result.models:
            container, prefix = st.parse_uri(result.output_prefix)
            tables.append(st.read_parquet(run.storage, container, layout.TrainingShard(prefix).stats))
    if tables:
        stats.store_table(run.storage, run.containers.models, version, pd.concat(tables, ignore_index=True))
    return {k: manifest[k] for k in ("version", "models", "train_start", "train_end")}


def _carry(
    run: Scope, coverage: dict[str, object], trained: list[fitting.TrainedModel]
) -> tuple[list[fitting.TrainedModel], pd.DataFrame | None]:
    """Production's models (and training statistics) of the sensors the candidate has none for, when the gate
    said they can be carried (``promotion.coverage``): the registered version is production with the candidate's
    sensors replaced, so promoting it drops no sensor. Each carried model is hash-checked as scoring checks it."""
    source = coverage.get("carried_from")
    if not source or not coverage.get("carried"):
        return [], None
    version = str(source)
    index = registry.read_index(run.storage, run.containers.models, version)
    new = pd.DataFrame([(m.device_id, m.tag) for m in trained], columns=KEY)
    keep = index.merge(new, on=KEY, how="left", indicator=True)
    keep = keep.loc[keep["_merge"] == "left_only"].drop(columns="_merge").reset_index(drop=True)
    loaded, refused = registry.load_models(run.storage, run.containers.models, version, keep)
    if refused:
        log.warning(
            "Not carrying %d unusable model(s) of %s: %s", len(refused), version, dict(list(refused.items())[:5])
        )
    carried = []
    for row in keep.itertuples(index=False):
        key = (str(row.device_id), str(row.tag))
        if key not in loaded:
            continue
        carried.append(
            fitting.TrainedModel(
                device_id=key[0],
                tag=key[1],
                pipeline=None,
                arrays=loaded[key],
                rows=int(getattr(row, "train_rows", 0) or 0),
                train_start=str(getattr(row, "train_start", "")),
                train_end=str(getattr(row, "train_end", "")),
                flagged_share=float(getattr(row, "train_flagged_share", float("nan"))),
                nu=None if pd.isna(getattr(row, "nu", None)) else float(row.nu),
            )
        )
    table = stats.read(run.storage, run.containers.models, version)
    if table is not None:
        table = table.merge(pd.DataFrame(list(loaded), columns=KEY), on=KEY).reset_index(drop=True)
    log.info(
        "Carrying %d model(s) of %s into the new version (sensors the run trained no model for)", len(carried), version
    )
    return carried, table


@names_storage_outages
def promote_or_not(run: Scope, version: str, *, promote: bool) -> dict[str, object]:
    """Move the production alias to ``version`` if its evaluation allows it (and ``promote`` is on).

    Returns ``promoted`` and, when not, ``reason``: "not promoted because ...", for the log and the alert.
    The run's staging folder goes in either case: the version holds everything worth keeping.
    """
    outcome = _promote_or_not(run, version, promote=promote)
    run.storage.delete_prefix(run.containers.staging, layout.TrainingRun(run.run_key).prefix)
    return outcome


def _promote_or_not(run: Scope, version: str, *, promote: bool) -> dict[str, object]:
    lineage = registry.read_version_manifest(run.storage, run.containers.models, version).lineage or {}
    where = f"the manifest of model version {version} (lineage.evaluation)"
    verdict = promotion.GateVerdict.from_dict(lineage.get("evaluation"), source=where).to_dict()
    carried_from = (verdict.get("coverage") or {}).get("carried_from")
    now = promotion.current(run.storage, run.containers.models)
    if not verdict["promotable"]:
        reason = "not promoted because " + "; ".join(verdict["reasons"])
    elif carried_from and now != carried_from:
        reason = (
            f"not promoted because production moved from {carried_from} to {now} since the evaluation, and the "
            f"version carries {carried_from}'s models for the sensors it did not train: train again"
        )
    elif not promote:
        reason = "not promoted because the run's promote param is off (the policy held)"
    else:
        cand, prod = verdict["candidate"], verdict["production"]
        why = f"policy held: flagged share {cand['flagged_share']:.1%}" + (
            f", F1 {cand['f1']:.3f} vs production {prod['f1']:.3f}"
            if prod and cand["f1"] is not None and prod["f1"] is not None
            else ""
        )
        if carried_from:
            why += f"; {verdict['coverage']['carried']} sensor(s) keep {carried_from}'s models"
        record = promotion.move_alias(
            run.storage, run.containers.models, version, action="promote", reason=why, by=f"training run {run.run_id}"
        )
        log.info("Promoted %s (was %s): %s", version, record["previous"], why)
        return {"version": version, "promoted": True, "reason": why, "previous": record["previous"]}
    log.warning("Version %s %s", version, reason)
    return {"version": version, "promoted": False, "reason": reason, "previous": None}


def model_params(params: Mapping[str, Any]) -> dict[str, object]:
    """The parameters a version's manifest records, from the training DAG's params (or the CLI's same names)."""
    mads, rate = params.get("threshold_mads"), params.get("false_alarm_rate")
    return {
        "false_alarm_rate": None if rate is None else float(rate),
        "threshold_mads": None if mads is None else float(mads),
        "nu": float(params["nu"]),
        "adaptive_nu": bool(params.get("adaptive_nu", fitting.DEFAULT_ADAPTIVE_NU)),
        "features": str(params.get("features", feature_sets.DEFAULT_FEATURE_SET)),
        "refit": bool(params.get("refit", True)),
        "gamma": "scale",
        "kernel": "rbf",
        "min_rows": int(params["min_rows"]),
        "scaler": "StandardScaler",
    }


def data_range(run: Scope, params: Mapping[str, Any]) -> dict[str, object]:
    """The lineage's data range: the whole range, the held-back hours, the subset."""
    holdout = int(params["holdout_hours"])
    return {
        "start": run.start.isoformat(),
        "end": run.end.isoformat(),
        "held_back_from": (run.end - holdout * HOUR).isoformat(),
        "devices": list(params.get("devices") or []),
        "tags": list(params.get("tags") or []),
        "late_folders": int(params["late_folders"]),
        "windows_container": run.containers.windows,
    }


def policy_of(params: Mapping[str, Any]) -> promotion.Policy:
    """The promotion policy of a training run's params (the training DAG's form, the CLI's same names).

    The gate judges the version's false-alarm rate against ``gate_false_alarm_rate`` where given, else against the
    ``false_alarm_rate`` the version was calibrated to (none for a version trained without one)."""
    gate = params.get("gate_false_alarm_rate")
    rate = gate if gate is not None else params.get("false_alarm_rate")
    return promotion.Policy(
        max_f1_drop=float(params.get("max_f1_drop", 0.0)),
        min_flagged_share=float(params.get("min_flagged_share", 0.0)),
        max_flagged_share=float(params.get("max_flagged_share", 0.1)),
        false_alarm_rate=None if rate is None else float(rate),
    )


def train_locally(
    run: Scope, params: Mapping[str, Any], policy: promotion.Policy, *, version: str | None = None
) -> dict[str, object]:
    """The training DAG's own steps, in order, in this process: gather, train each shard (as the local backend
    runs ``train-shard``), evaluate, register, promote by policy. What ``python -m sensor_scoring train`` and the
    demo run, so they make the version the DAG would make from the same windows and params (the DAG's names:
    holdout_hours, sensors_per_shard, nu, min_rows, false_alarm_rate, threshold_mads, features, adaptive_nu,
    refit, devices, tags, late_folders, promote). Returns the registered version's facts and the promotion outcome."""
    shards = gather(
        run,
        holdout_hours=int(params["holdout_hours"]),
        sensors_per_shard=int(params["sensors_per_shard"]),
        nu=float(params["nu"]),
        min_rows=int(params["min_rows"]),
        threshold_mads=params.get("threshold_mads"),
        false_alarm_rate=params.get("false_alarm_rate"),
        devices=params.get("devices") or None,
        tags=params.get("tags") or None,
        late_folders=int(params["late_folders"]),
        features=str(params.get("features", feature_sets.DEFAULT_FEATURE_SET)),
        adaptive_nu=bool(params.get("adaptive_nu", fitting.DEFAULT_ADAPTIVE_NU)),
        refit=bool(params.get("refit", True)),
    )
    results = [train_shard(run.storage, shard.spec_uri) for shard in shards]
    verdict = evaluate(run, results, policy)
    registered = register(
        run,
        results,
        version=version or registry.new_version_name(),
        params=model_params(params),
        data_range=data_range(run, params),
    )
    outcome = promote_or_not(run, str(registered["version"]), promote=bool(params.get("promote", True)))
    return {
        **registered,
        "promoted": outcome["promoted"],
        "reason": outcome["reason"],
        "previous": outcome["previous"],
        "evaluation": {k: verdict.get(k) for k in ("candidate_all", "candidate", "production", "coverage")},
    }
