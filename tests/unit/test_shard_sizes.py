"""Shards sized to the work: bounded mapped tasks, bounded windows per shard, about equal cost, and the fixed size
still there when asked for."""

from __future__ import annotations

import numpy as np
import pytest

from sensor_scoring.steps.plan import MAX_SHARD_COST, MAX_SHARD_WINDOWS, MAX_SHARDS, shard_numbers


# 60 windows per sensor (an hour, as plan_shards sizes from the model index): 1M sensors' 60M windows need 240 shards
# of MAX_SHARD_WINDOWS, beyond MAX_SHARDS, which caps only the split by cost.
@pytest.mark.parametrize("sensors,expected", [(1_000, 1), (10_000, 3), (100_000, 24), (1_000_000, 240)])
def test_auto_sizing_bounds_the_mapped_tasks_and_balances_cost(sensors, expected):
    windows = np.full(sensors, 60)
    cost = windows * np.random.default_rng(7).integers(10, 60, sensors)  # support vectors per model
    numbers = shard_numbers(windows, cost, None)
    assert numbers.max() + 1 == expected
    assert expected <= MAX_SHARDS or expected == int(np.ceil(windows.sum() / MAX_SHARD_WINDOWS))
    assert np.all(np.diff(numbers) >= 0)  # contiguous runs of sensors, in plan order
    per_shard = np.bincount(numbers, weights=cost)
    assert per_shard.max() / per_shard.min() < 1.1  # about equal cost
    # the windows bound holds whatever the shard count (past it by less than one sensor's windows)
    assert np.bincount(numbers, weights=windows).max() <= MAX_SHARD_WINDOWS + windows.max()


def test_cheap_sensors_never_pile_their_windows_into_one_shard():
    """Half the fleet's models 1000 times costlier than the other half's: a split by cost alone put the cheap half's
    windows in one shard, 1.6 times the windows bound. Both bounds hold."""
    windows = np.full(10_000, 60)
    cost = windows * np.r_[np.full(5_000, 1_000), np.full(5_000, 1)]
    numbers = shard_numbers(windows, cost, None)
    assert np.all(np.diff(numbers) >= 0)
    assert np.bincount(numbers, weights=windows).max() <= MAX_SHARD_WINDOWS
    assert np.bincount(numbers, weights=cost).max() <= MAX_SHARD_COST
    assert numbers.max() + 1 == 4  # 2 by cost for the costly half, 1.2 by windows for the cheap one


def test_fixed_size_and_edge_cases():
    assert shard_numbers(np.full(5, 60), np.full(5, 600), 2).tolist() == [0, 0, 1, 1, 2]
    assert shard_numbers(np.zeros(0, dtype="int64"), np.zeros(0, dtype="int64"), None).tolist() == []
    # one sensor costlier than a shard: it gets its own, and the numbers have no gaps
    assert shard_numbers(np.full(3, 60), np.array([10**9, 1, 1]), None).tolist() == [0, 1, 1]
