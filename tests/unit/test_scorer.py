"""The vectorised scorer against scikit-learn itself, sensor by sensor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sensor_scoring import features
from sensor_scoring.features import feature_matrix
from sensor_scoring.models import fitting
from sensor_scoring.scorer import ELEMENT_BUDGET, decision_function, score
from tests.support.helpers import START, fleet_windows


@pytest.fixture(scope="module")
def setup():
    windows = fleet_windows(devices=3, tags=3, hours=4)
    train = windows[windows["window_end"] < START.replace(hour=3)]
    test = windows[windows["window_end"] >= START.replace(hour=3)]
    return fitting.train_models(train), test


def test_scores_equal_sklearn_decision_function_and_predict(setup):
    trained, test = setup
    out = score(test, {(m.device_id, m.tag): m.arrays for m in trained})
    assert len(out) == len(test)
    for m in trained:
        rows = out[(out["device_id"] == m.device_id) & (out["tag"] == m.tag)]
        features = feature_matrix(rows)
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


@pytest.fixture(scope="module")
def mixed():
    """Models of very different support-vector counts (nu from 0.01 to 0.9) on one fleet's history."""
    windows = fleet_windows(devices=3, tags=2, hours=5, seed=3)
    history = windows[windows["window_end"] < START.replace(hour=4)]
    keys = sorted(history.groupby(["device_id", "tag"]).groups)
    pipelines = {}
    for key, nu in zip(keys, [0.01, 0.05, 0.2, 0.5, 0.9, 0.02], strict=True):
        rows = history[(history["device_id"] == key[0]) & (history["tag"] == key[1])]
        pipelines[key] = fitting.fit_pipeline(feature_matrix(rows), nu=nu)
    return pipelines, windows


def assert_equals_sklearn(pipelines, rows):
    out = score(rows, {key: fitting.arrays_of(p) for key, p in pipelines.items()})
    for key, pipeline in pipelines.items():
        mine = out[(out["device_id"] == key[0]) & (out["tag"] == key[1])]
        if len(mine):
            features = feature_matrix(mine)
            np.testing.assert_allclose(mine["score"], pipeline.decision_function(features), rtol=0, atol=1e-9)
            np.testing.assert_array_equal(mine["is_anomaly"], pipeline.predict(features) == -1)


def test_models_of_very_different_support_vector_counts(mixed):
    pipelines, windows = mixed
    widths = sorted(len(p[-1].dual_coef_.ravel()) for p in pipelines.values())
    assert widths[-1] > 10 * widths[0]  # the batches really mix narrow and wide models
    assert_equals_sklearn(pipelines, windows[windows["window_end"] >= START.replace(hour=4)])


def test_one_window_many_windows_and_uneven_counts(mixed):
    """One window for one sensor, five hours (300 windows, several row blocks) for another, a few for the rest:
    blocks of different lengths in one batch, and a batch padded in rows and in support vectors."""
    pipelines, windows = mixed
    keys = sorted(pipelines)
    of = [windows[(windows["device_id"] == k[0]) & (windows["tag"] == k[1])] for k in keys]
    rows = pd.concat([of[0].iloc[:1], of[1], of[2].iloc[:7], of[3].iloc[:65], of[4].iloc[:129], of[5].iloc[:2]])
    assert_equals_sklearn(pipelines, rows.sample(frac=1.0, random_state=2))
    assert_equals_sklearn(pipelines, of[4].iloc[:1])  # a single window, alone


@pytest.mark.parametrize("budget", [1, 2_000])
def test_small_budgets_still_equal_sklearn(mixed, monkeypatch, budget):
    pipelines, windows = mixed
    monkeypatch.setattr("sensor_scoring.scorer.ELEMENT_BUDGET", budget)
    assert_equals_sklearn(pipelines, windows)


def test_a_model_of_extreme_gamma_beside_a_wider_one_scores_finite_and_exact():
    """A model whose gamma is astronomically large (a history constant up to rounding once gave one) scored in one
    batch with a wider model: its padding lanes meet the other model's support vectors, whose exponents are no
    squared distance of its own and overflowed to inf, so inf x 0 made its windows' scores NaN (never flagged).
    Every score is finite and equals the kernel sum computed from differences, as libsvm computes it."""
    from sensor_scoring.scorer import ModelArrays

    rng = np.random.default_rng(4)
    p = np.full(5, 3.0)
    wide_sv = np.vstack([p, rng.normal(size=(49, 5))])
    wide = ModelArrays(np.zeros(5), np.ones(5), wide_sv, np.full(50, 0.02), -0.1, 0.2)
    narrow = ModelArrays(np.zeros(5), np.ones(5), -np.abs(rng.normal(size=(3, 5))), np.full(3, 1 / 3), -0.5, 1e28)
    rows = np.vstack([p + rng.normal(scale=1e-3, size=(20, 5)), narrow.support_vectors, rng.normal(size=(10, 5))])
    index = np.array([1] * 23 + [0] * 10)
    values = decision_function(rows, index, [wide, narrow])

    def by_differences(x: np.ndarray, m: ModelArrays) -> float:
        d2 = (((x - m.mean) / m.scale - m.support_vectors) ** 2).sum(axis=1)
        return float(m.dual_coef @ np.exp(-m.gamma * d2) + m.intercept)

    expected = [by_differences(x, [wide, narrow][i]) for x, i in zip(rows, index, strict=True)]
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-9)
    assert (values[:20] == -0.5).all() and np.allclose(values[20:23], 1 / 3 - 0.5)


@pytest.mark.parametrize("value", [1e6, 1e150, 1e300, -1e300])
def test_windows_of_astronomical_values_are_flagged_with_finite_scores(setup, value):
    """A window whose level is far beyond anything in training: its squared norm overflows the expansion, so its
    exponents come from differences; it scores as scikit-learn scores it (every kernel 0: the intercept), is
    flagged, and raises no numpy warning."""
    import warnings

    trained, test = setup
    rows = test.copy()
    rows.loc[rows.index[:3], ["value_avg", "value_min", "value_max"]] = value
    models = {(m.device_id, m.tag): m.arrays for m in trained}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = score(rows, models)
    assert np.isfinite(out["score"]).all() and out["is_anomaly"].iloc[:3].all()
    first = out.iloc[:3]
    for (device, tag), score_value in zip(first[["device_id", "tag"]].itertuples(index=False), first["score"]):
        assert score_value == pytest.approx(models[(device, tag)].intercept)
    rest = out.iloc[3:]
    for (device, tag), group in rest.groupby(["device_id", "tag"]):
        pipeline = next(m.pipeline for m in trained if (m.device_id, m.tag) == (device, tag))
        np.testing.assert_allclose(group["score"], pipeline.decision_function(feature_matrix(group)), atol=1e-9)


@pytest.fixture(scope="module")
def context_setup():
    """Models of feature set context-v1: features derived as training and scoring derive them, the scored hour with
    the training hours as its lookback."""
    windows = fleet_windows(devices=3, tags=3, hours=4, seed=3)
    train = windows[windows["window_end"] <= START.replace(hour=3)]
    test = windows[windows["window_end"] > START.replace(hour=3)]
    trained = fitting.train_models(features.add_features(train), features=features.CONTEXT_V1, threshold_mads=5.0)
    return trained, features.add_features(test, context=train)


def test_context_features_score_equal_to_sklearn(context_setup):
    trained, test = context_setup
    out = score(test.sample(frac=1.0, random_state=1), {(m.device_id, m.tag): m.arrays for m in trained})
    assert len(out) == len(test) and {m.arrays.features for m in trained} == {"context-v1"}
    for m in trained:
        rows = out[(out["device_id"] == m.device_id) & (out["tag"] == m.tag)]
        matrix = feature_matrix(rows, features.CONTEXT_V1)
        assert matrix.shape[1] == len(features.FEATURE_SETS["context-v1"])
        np.testing.assert_allclose(rows["score"], m.pipeline.decision_function(matrix), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(rows["is_anomaly"], rows["score"] <= m.arrays.threshold)


def test_context_models_need_their_derived_columns_and_one_set_per_call(context_setup, setup):
    trained, test = context_setup
    lookup = {(m.device_id, m.tag): m.arrays for m in trained}
    plain = test[[c for c in test.columns if c not in features.DERIVED]]
    with pytest.raises(KeyError, match="level_deviation"):
        score(plain, lookup)
    old, old_test = setup
    mixed = {**{(m.device_id, m.tag): m.arrays for m in old}, ("dev-0000", "temperature"): trained[0].arrays}
    with pytest.raises(ValueError, match="several feature sets"):
        score(features.add_features(old_test), mixed)
