"""The vectorised scorer against scikit-learn itself, sensor by sensor."""

from __future__ import annotations

import numpy as np
import pytest

from sensor_scoring import models
from sensor_scoring.scorer import ELEMENT_BUDGET, decision_function, score
from tests.support.helpers import START, fleet_windows


@pytest.fixture(scope="module")
def setup():
    windows = fleet_windows(devices=3, tags=3, hours=4)
    train = windows[windows["window_end"] < START.replace(hour=3)]
    test = windows[windows["window_end"] >= START.replace(hour=3)]
    return models.train_models(train), test


def test_scores_equal_sklearn_decision_function_and_predict(setup):
    trained, test = setup
    out = score(test, {(m.device_id, m.tag): m.arrays for m in trained})
    assert len(out) == len(test)
    for m in trained:
        rows = out[(out["device_id"] == m.device_id) & (out["tag"] == m.tag)]
        features = models.feature_matrix(rows)
        np.testing.assert_allclose(rows["score"], m.pipeline.decision_function(features), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(rows["is_anomaly"], m.pipeline.predict(features) == -1)


@pytest.mark.parametrize("budget", [1, 500, 5_000])
def test_batching_does_not_change_results(setup, monkeypatch, budget):
    """A tiny budget forces one model per batch and one row per step; results agree to rounding
    (padding to another width may reorder a sum, moving the last bit)."""
    trained, test = setup
    lookup = {(m.device_id, m.tag): m.arrays for m in trained}
    whole = score(test, lookup)["score"].to_numpy()
    monkeypatch.setattr("sensor_scoring.scorer.ELEMENT_BUDGET", budget)
    np.testing.assert_allclose(score(test, lookup)["score"].to_numpy(), whole, rtol=1e-12, atol=1e-15)
    assert ELEMENT_BUDGET > 5_000


def test_rows_in_any_order_get_their_own_model(setup):
    trained, test = setup
    lookup = {(m.device_id, m.tag): m.arrays for m in trained}
    shuffled = test.sample(frac=1.0, random_state=1)
    np.testing.assert_allclose(
        score(shuffled, lookup).loc[test.index, "score"], score(test, lookup)["score"], rtol=1e-12, atol=1e-15
    )


def test_missing_model_is_named_not_skipped(setup):
    trained, test = setup
    with pytest.raises(KeyError, match="no model for 1 sensor"):
        score(test, {(m.device_id, m.tag): m.arrays for m in trained[1:]})


def test_shape_errors_are_clear(setup):
    trained, _ = setup
    with pytest.raises(ValueError, match="features must be"):
        decision_function(np.zeros((2, 3)), np.zeros(2, dtype=int), [trained[0].arrays])
    with pytest.raises(IndexError):
        decision_function(np.zeros((1, 5)), np.array([4]), [trained[0].arrays])
    assert decision_function(np.zeros((0, 5)), np.zeros(0, dtype=int), []).shape == (0,)
