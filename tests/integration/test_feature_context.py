"""Features that look back at earlier windows, on a real Azurite, through the DAG's steps.

A window's features depend only on what landed: three consecutive hours scored forward, backward, and the middle
one rescored after the others give identical predictions, equal to the features computed over the whole range at
once. Versions registered before feature sets had names keep scoring on the window's own columns.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from sensor_scoring import features, features as feature_sets, layout
from sensor_scoring.models import fitting, registry
from sensor_scoring.runs.scope import Scope
from sensor_scoring.scorer import score
from sensor_scoring.storage import parquet_bytes
from sensor_scoring.validation import check_windows
from sensor_scoring.windows import LandingPlan, land_windows
from tests.support.helpers import START, fleet_windows, run_steps
from tests.support.training import train_and_register

pytestmark = [pytest.mark.azurite]
H = timedelta(hours=1)
KEY = ["device_id", "tag", "window_end"]
SCORED = [START + 3 * H, START + 4 * H, START + 5 * H]


@pytest.fixture
def landed(blob, containers):
    """Six hours of 2 x 2 sensors, half of each hour's last windows landing late in the next folder, with a gap
    across an hour boundary and an invalid window in the lookback of hour 4; context-v1 models trained on hours
    0-2 (by ``train``, the CLI's path) and promoted."""
    windows = fleet_windows(devices=2, tags=2, hours=6, seed=4)
    gap = (windows["device_id"] == "dev-0001") & windows["window_end"].between(
        pd.Timestamp(START + 4 * H - timedelta(minutes=20)), pd.Timestamp(START + 4 * H + timedelta(minutes=5))
    )
    windows = windows.loc[~gap.to_numpy()].reset_index(drop=True)
    bad = windows["window_end"] == pd.Timestamp(START + 4 * H - timedelta(minutes=3))
    assert bad.sum() == 2  # dev-0000's two sensors
    windows.loc[bad.to_numpy(), "value_std"] = -1.0  # negative_std: quarantined by hour 3, never looked back at
    land_windows(blob, containers.windows, windows, LandingPlan(late_share=0.5, late_minutes=3))
    manifest, _ = train_and_register(
        blob, containers, START, START + 3 * H, version="v1", promote=True, features=features.CONTEXT_V1
    )
    assert manifest["features"] == "context-v1"
    assert manifest["feature_columns"] == list(features.FEATURE_SETS["context-v1"])
    return windows


def run_hour(blob, containers, start, run_id: str) -> pd.DataFrame:
    hour = Scope(blob, containers, run_id, start, start + H)
    run_steps(hour, commit_params={"max_quarantine_share": 0.5})
    data = blob.read_bytes(containers.predictions, layout.Partition(start).data)
    return pd.read_parquet(io.BytesIO(data))


def predictions(blob, containers, hours, tag: str) -> pd.DataFrame:
    frames = {h: run_hour(blob, containers, h, f"{tag}-{h:%H}") for h in hours}
    out = pd.concat([frames[h] for h in sorted(frames)], ignore_index=True)
    return out[[*KEY, "score", "is_anomaly", "model_version"]].sort_values(KEY).reset_index(drop=True)


def test_predictions_do_not_depend_on_the_order_hours_are_scored_in(blob, containers, landed):
    forward = predictions(blob, containers, SCORED, "forward")
    backward = predictions(blob, containers, SCORED[::-1], "backward")
    middle = predictions(blob, containers, [SCORED[1]], "again")
    pd.testing.assert_frame_equal(forward, backward)
    in_middle = forward["window_end"].dt.floor("h") == pd.Timestamp(SCORED[1])  # the hour of its window_end
    pd.testing.assert_frame_equal(forward.loc[in_middle].reset_index(drop=True), middle)
    # and equal to the features of the whole range at once, the valid windows only: context is used, and only that
    valid = check_windows(landed, START, START + 6 * H).valid
    version = registry.read_index(blob, containers.models, "v1")
    loaded, _ = registry.load_models(blob, containers.models, "v1", version)
    whole = score(features.add_features(valid), loaded)
    expected = whole.loc[whole["window_end"] >= pd.Timestamp(SCORED[0])].sort_values(KEY).reset_index(drop=True)
    assert len(expected) == len(forward)
    np.testing.assert_allclose(forward["score"], expected["score"], rtol=0, atol=1e-12)
    # the first windows of each hour looked back into the hour before (their deviation is not the gap rule's 0)
    derived = features.add_features(valid)
    first = derived.loc[derived["window_end"] == pd.Timestamp(SCORED[1])]
    assert (first.loc[first["device_id"] == "dev-0000", "level_deviation"] != 0.0).all()


def test_a_version_registered_before_feature_sets_had_names_scores_as_before(blob, containers, landed):
    """Its manifest lists the window's columns, its index joins them: it is window-v1 and scores on those."""
    train = check_windows(landed, START, START + 3 * H).valid
    trained = fitting.train_models(train)  # window-v1
    registry.register(blob, containers.models, trained, version="v0", params={}, promote=True)
    prefix = "versions/v0/"
    index = registry.read_index(blob, containers.models, "v0").assign(features=",".join(feature_sets.FEATURES))
    index_bytes = parquet_bytes(index)
    manifest = registry.read_manifest(blob, containers.models, "v0")
    manifest["features"] = list(feature_sets.FEATURES)
    del manifest["feature_columns"]
    manifest["index"] = {"file": "models.parquet", "sha256": hashlib.sha256(index_bytes).hexdigest()}
    blob.write_bytes(containers.models, prefix + "models.parquet", index_bytes)
    blob.write_bytes(containers.models, prefix + "manifest.json", json.dumps(manifest).encode())
    out = run_hour(blob, containers, SCORED[0], "old-version")
    assert set(out["model_version"]) == {"v0"} and len(out) == 198  # hour 3 lacks dev-0001's gap and 2 bad windows
    for m in trained:
        rows = out[(out["device_id"] == m.device_id) & (out["tag"] == m.tag)]
        matrix = rows[list(feature_sets.FEATURES)].to_numpy(dtype=float)
        np.testing.assert_allclose(rows["score"], m.pipeline.decision_function(matrix), rtol=1e-9, atol=1e-12)
