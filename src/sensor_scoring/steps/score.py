"""score_shard: the work of one shard, the same wherever it runs (``python -m sensor_scoring score-shard``): check
its windows with the suite, add their features, score them with their sensors' models."""

from __future__ import annotations

import pandas as pd

from sensor_scoring import layout, storage as st
from sensor_scoring.contracts import (
    PREDICTION_SCHEMA,
    QUARANTINE_SCHEMA,
    REASON_COLUMN,
    ShardResult,
    ShardSpec,
)
from sensor_scoring.models import registry
from sensor_scoring.runs.common import names_storage_outages, quarantine_frame
from sensor_scoring.scorer import score
from sensor_scoring.storage import Storage
from sensor_scoring.windows import WINDOW


@names_storage_outages
def score_shard(storage: Storage, spec_uri: str) -> ShardResult:
    """Check the shard's windows (``steps.load.check_shard``), load its models, score the valid windows, and write
    predictions and every row set aside: by the suite, by the reader, as a stray, for want of a model
    (``no_model``) or of a usable one.

    ``result.json`` is written last; its presence means the shard's outputs are complete.
    """
    from sensor_scoring.steps.load import check_shard

    container, spec_path = st.parse_uri(spec_uri)
    spec = ShardSpec.from_json(storage.read_bytes(container, spec_path), source=spec_uri)
    checked = check_shard(storage, *st.parse_uri(spec.input), spec.start, spec.end)
    windows = checked.checked.valid
    wanted = pd.DataFrame([m.to_dict() for m in spec.models], columns=["device_id", "tag", "pack", "row", "sha256"])
    loaded, refused = registry.load_models(storage, spec.containers.models, spec.model_version, wanted)
    sensors = pd.MultiIndex.from_frame(windows[["device_id", "tag"]].astype(object))
    usable = sensors.isin(list(loaded))
    has_model = sensors.isin(list(zip(wanted["device_id"], wanted["tag"])))
    scored = score(windows.loc[usable], loaded) if usable.any() else windows.iloc[:0].assign(score=[], is_anomaly=[])
    scored = scored.assign(
        window_start=scored["window_end"] - WINDOW,
        model_version=spec.model_version,
        run_id=spec.run_id,
        scored_at=pd.Timestamp.now(tz="UTC"),
    )
    reasons = pd.DataFrame([(d, t, r) for (d, t), r in refused.items()], columns=["device_id", "tag", REASON_COLUMN])
    rejected = windows.loc[~usable & has_model].merge(reasons, on=["device_id", "tag"], how="left")
    rejected[REASON_COLUMN] = rejected[REASON_COLUMN].fillna("model_missing")
    no_model = windows.loc[~has_model].assign(**{REASON_COLUMN: "no_model"})
    rejected = pd.concat(
        [f for f in (checked.checked.quarantined, no_model, rejected) if len(f)] or [rejected], ignore_index=True
    )
    predictions = scored.reindex(columns=PREDICTION_SCHEMA.names)
    out_container, out_prefix = st.parse_uri(spec.output_prefix)
    outputs = layout.Shard(out_prefix)
    storage.write_bytes(out_container, outputs.predictions, st.parquet_bytes(predictions, PREDICTION_SCHEMA))
    storage.write_bytes(
        out_container, outputs.quarantine, st.parquet_bytes(quarantine_frame(rejected, spec.run_id), QUARANTINE_SCHEMA)
    )
    result = ShardResult(
        shard=spec.shard,
        output_prefix=spec.output_prefix,
        scored=len(predictions),
        anomalies=int(predictions["is_anomaly"].sum()),
        quarantined=len(rejected),
        sensors=len(wanted),
        refused_models={f"{d}/{t}": r for (d, t), r in sorted(refused.items())},
        validation=checked.validation,
    )
    storage.write_bytes(out_container, outputs.result, result.to_json())
    return result


def load_shard_result(storage: Storage, output_prefix: str) -> ShardResult:
    """The result a shard wrote under ``output_prefix`` (an URI), checked against its contract."""
    container, prefix = st.parse_uri(output_prefix)
    path = layout.Shard(prefix).result
    return ShardResult.from_json(storage.read_bytes(container, path), source=st.make_uri(container, path))


def read_shard_result(storage: Storage, output_prefix: str) -> dict[str, object]:
    """``load_shard_result`` in its XCom form: what every backend returns for the mapped task."""
    return load_shard_result(storage, output_prefix).to_dict()
