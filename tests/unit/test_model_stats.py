"""Training statistics: the same decision values as the fitted pipeline, a histogram that sums to the windows,
a PSI that is zero for the training distribution and large for a shifted one, and the table beside the index."""

from __future__ import annotations

import numpy as np
import pytest

from sensor_scoring.features import feature_matrix
from sensor_scoring.models import fitting, registry, stats
from sensor_scoring.storage import LocalStorage
from tests.support.helpers import fleet_windows


@pytest.fixture(scope="module")
def windows():
    return fleet_windows(devices=2, tags=2, hours=3)


@pytest.fixture(scope="module")
def trained(windows) -> list[fitting.TrainedModel]:
    return fitting.train_models(windows)


def _features(windows, model):
    rows = windows[(windows["device_id"] == model.device_id) & (windows["tag"] == model.tag)]
    return feature_matrix(rows)


def test_statistics_match_the_pipeline(windows, trained):
    model = trained[0]
    features = _features(windows, model)
    got = stats.training_statistics(model.arrays, features)
    values = model.pipeline.decision_function(features)
    assert got["train_rows"] == len(features) == sum(got["counts"])
    assert len(got["counts"]) == len(got["edges"]) + 1 <= stats.BINS
    assert got["train_flagged_share"] == pytest.approx(model.flagged_share, abs=1.5 / len(features))
    assert got["score_mean"] == pytest.approx(values.mean(), rel=1e-9)
    np.testing.assert_array_equal(stats.bin_counts(values, got["edges"]), got["counts"])


def test_psi_is_zero_for_training_and_large_for_a_shift(windows, trained):
    model = trained[0]
    features = _features(windows, model)
    got = stats.training_statistics(model.arrays, features)
    same = stats.bin_counts(model.pipeline.decision_function(features), got["edges"])
    assert stats.psi(got["counts"], same) == pytest.approx(0.0, abs=1e-9)
    shifted = features.copy()
    shifted[:, 0] += 5 * features[:, 0].std()  # value_avg far from training
    moved = stats.bin_counts(model.pipeline.decision_function(shifted), got["edges"])
    assert stats.psi(got["counts"], moved) > 1.0
    with pytest.raises(ValueError, match="non-empty"):
        stats.psi([1, 2], [0, 0])


def test_store_writes_one_row_per_model_and_read_says_none_without(tmp_path, windows, trained):
    storage = LocalStorage(tmp_path)
    registry.register(storage, "models", trained, version="v1", params={}, promote=False)
    assert stats.read(storage, "models", "v1") is None  # registered without statistics: no error
    assert stats.store(storage, "models", "v1", trained, windows) == len(trained)
    table = stats.read(storage, "models", "v1")
    assert table is not None and list(table.columns) == list(stats.COLUMNS)
    assert sorted(zip(table["device_id"], table["tag"])) == sorted((m.device_id, m.tag) for m in trained)
    assert (table["train_rows"] == [m.rows for m in trained]).all()
    # the calibrated false-alarm rate health expects of a healthy hour (NaN for a model not calibrated)
    rates = [float("nan") if m.false_alarm_rate is None else m.false_alarm_rate for m in trained]
    assert table["false_alarm_rate"].tolist() == pytest.approx(rates, nan_ok=True)
