"""One read path: the hourly run, the training DAG's gather and the ``train`` command see exactly the same windows.

A few hours land with what the reader and the suite set aside (a stray, an exact duplicate, a conflicting copy, a
row breaking a rule, a value the reader rejects); the hourly run's shards (``read_windows`` routed by sensor, then
``check_shard``, as ``score_shard`` runs it), the training DAG's ``gather`` and ``python -m sensor_scoring train``
each read the range. Their valid windows, features included, are compared row for row, and with a subset too.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest

from sensor_scoring import layout, settings as config, storage as st
from sensor_scoring.cli import main
from sensor_scoring.contracts import REASON_COLUMN
from sensor_scoring.models import fitting, registry
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps import load as load_step
from sensor_scoring.steps.training import gather
from sensor_scoring.storage import LocalStorage
from sensor_scoring.windows import LandingPlan, land_windows, to_asa_json_lines
from tests.support.helpers import START, fleet_windows, read_and_plan

H = timedelta(hours=1)
KEY = ["device_id", "tag", "window_end"]
FIRST, END = START + H, START + 4 * H  # the range read: three hours, with the hour before as lookback


@pytest.fixture()
def landed(tmp_path, monkeypatch) -> LocalStorage:
    monkeypatch.setenv(config.STORAGE_ENV, str(tmp_path / "storage"))
    storage = LocalStorage(tmp_path / "storage")
    containers = config.Containers()
    windows = fleet_windows(devices=3, tags=2, hours=4)
    land_windows(storage, containers.windows, windows, LandingPlan(late_share=0.3, seed=4))
    registry.register(storage, containers.models, fitting.train_models(windows), version="v1", params={}, promote=True)
    sample = windows.loc[windows["window_end"] == pd.Timestamp(FIRST + timedelta(minutes=20))].iloc[0]
    folder = layout.window_folder(FIRST + H)
    bad = sample.to_dict() | {"window_end": FIRST + H + timedelta(minutes=5), "value_std": -1.0}
    conflicting = sample.to_dict() | {"value_avg": float(sample["value_avg"]) + 1.0}
    stray = sample.to_dict() | {"window_end": FIRST + 3 * H + timedelta(minutes=30)}  # far ahead of its folder
    extra = pd.DataFrame([sample.to_dict(), conflicting, bad, stray])
    storage.write_bytes(containers.windows, f"{folder}/extra_1.json", to_asa_json_lines(extra))
    storage.write_bytes(
        containers.windows,
        f"{folder}/rejected_1.json",
        json.dumps(sample.to_dict() | {"window_end": "not a time", "device_id": "dev-0001"}, default=str).encode(),
    )
    return storage


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=["source_file"], errors="ignore")
    frame = frame.assign(device_id=frame["device_id"].astype(str), tag=frame["tag"].astype(str))
    return frame.sort_values(KEY).reset_index(drop=True)[sorted(frame.columns)]


def _hourly(storage: LocalStorage, subset: dict) -> pd.DataFrame:
    """What the hourly runs' shards check and score, hour by hour."""
    containers, frames = config.Containers(), []
    for hour in range(3):
        scope = Scope(storage, containers, f"hourly-{hour}", FIRST + hour * H, FIRST + (hour + 1) * H)
        _, shards = read_and_plan(scope, sensors_per_shard=2, **subset)
        for shard in shards:
            container, spec = st.parse_uri(shard.spec_uri)
            input_folder = layout.Shard.of_spec(spec).input
            checked = load_step.check_shard(storage, container, input_folder, scope.start, scope.end)
            frames.append(checked.checked.valid)
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("subset", [{}, {"devices": ["dev-0001"], "tags": ["temperature"]}], ids=["all", "subset"])
def test_the_hourly_run_training_and_the_train_command_read_the_same_windows(landed, monkeypatch, subset):
    seen: list[load_step.RangeRead] = []
    read_range = load_step.read_range

    def recording(*args, **kwargs):
        seen.append(read_range(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(load_step, "read_range", recording)
    containers = config.Containers()
    gather(
        Scope(landed, containers, "training-dag", FIRST, END),
        holdout_hours=1,
        sensors_per_shard=4,
        nu=0.02,
        min_rows=10,
        false_alarm_rate=0.02,
        **subset,
    )
    names = [arg for k, v in subset.items() for arg in (f"--{k}", *v)]
    assert main(["train", f"--start={FIRST.isoformat()}", f"--end={END.isoformat()}", "--holdout-hours=1", *names]) == 0
    by_dag, by_command = seen
    hourly = _hourly(landed, subset)

    assert len(hourly)
    reasons = {r for joined in by_dag.quarantined[REASON_COLUMN] for r in str(joined).split(";")}
    if not subset:  # a conflicting copy, a rule broken, a stray, a value the reader rejects: none trained on
        assert {"conflicting_duplicate", "negative_std", "window_landed_early", "bad_timestamp"} <= reasons
    pd.testing.assert_frame_equal(_sorted(by_dag.valid), _sorted(by_command.valid))
    pd.testing.assert_frame_equal(_sorted(by_dag.quarantined), _sorted(by_command.quarantined))
    pd.testing.assert_frame_equal(_sorted(by_dag.valid), _sorted(hourly), check_dtype=False)
    if subset:
        assert set(zip(hourly["device_id"], hourly["tag"])) == {("dev-0001", "temperature")}


def test_file_groups_are_bounded_and_cover_every_file_once_in_order():
    sizes = [10, 50, 30, 200, 5, 5, 60, 0, 40]
    groups = load_step.file_groups(sizes, group_bytes=100)
    assert [i for g in groups for i in g] == list(range(len(sizes)))  # every file once, listing order kept
    for g in groups:
        assert sum(sizes[i] for i in g) <= 100 or len(g) == 1  # only a file larger than a group stands alone
    assert load_step.file_groups([], group_bytes=100) == []


def test_rows_are_routed_by_sensor_alone_so_every_copy_of_a_window_meets_the_others():
    frame = pd.DataFrame(
        {
            "device_id": pd.array(["a", "b", "a", None, "c", "a"], dtype="string"),
            "tag": pd.array(["t", "t", "t", "t", None, "u"], dtype="string"),
        }
    )
    shards = load_step.route(frame, 7, None)
    assert shards[0] == shards[2]  # the same sensor, wherever its rows are
    again = load_step.route(frame.iloc[::-1].astype(object), 7, None)[::-1]
    assert list(again) == list(shards)  # the order of rows and the dtype of the names change nothing
    routing = pd.DataFrame({"device_id": ["a"], "tag": ["t"], "shard": [5]})
    routed = load_step.route(frame, 7, routing)
    assert routed[0] == routed[2] == 5 and list(routed[[1, 3, 4, 5]]) == list(shards[[1, 3, 4, 5]])
    assert ((shards >= 0) & (shards < 7)).all()
