"""Ad-hoc rescoring from the trigger form: params, subset selection, and partitions that keep every other row.

Pure functions on tiny frames first, then the real DAG (dag.test) on a real Azurite: a full multi-hour run, then
subset rescorings with another model version, checked row by row against the partition before.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from sensor_scoring.contracts import SensorDuplicates, Subset
from sensor_scoring.features import feature_matrix
from sensor_scoring.runs.rescoring import (
    SubsetMatchesNothing,
    check_purged_policy,
    check_subset_matches,
    duplicates_by_sensor,
    key_codes,
    select_sensors,
    subset_of,
)
from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage
from sensor_scoring.validation import check_windows
from sensor_scoring.windows import parse_window_file, to_asa_json_lines
from tests.support.helpers import START, fleet_windows
from tests.support.partitions import read_partition
from tests.support.training import train_and_register

H = timedelta(hours=1)
FIRST = START + 5 * H  # the two rescored hours: FIRST and FIRST + 1h
KEY = ["device_id", "tag", "window_end"]
SUBSET = ("dev-0000", "temperature")


# --- pure functions -------------------------------------------------------------------------------------------


def test_select_sensors_by_devices_tags_or_both():
    windows = fleet_windows(devices=3, tags=2, hours=1)
    assert len(select_sensors(windows, [], [])) == len(windows)
    assert len(select_sensors(windows, None, None)) == len(windows)
    only_dev = select_sensors(windows, ["dev-0001"], [])
    assert set(only_dev["device_id"]) == {"dev-0001"} and only_dev["tag"].nunique() == 2
    only_tag = select_sensors(windows, [], ["pressure"])
    assert set(only_tag["tag"]) == {"pressure"} and only_tag["device_id"].nunique() == 3
    both = select_sensors(windows, ["dev-0001", "dev-0002"], ["pressure"])
    assert set(map(tuple, both[["device_id", "tag"]].drop_duplicates().values)) == {
        ("dev-0001", "pressure"),
        ("dev-0002", "pressure"),
    }
    assert select_sensors(windows, ["no-such-device"], []).empty  # negative: a subset that matches nothing


def test_subset_and_duplicates_per_sensor_and_hour():
    windows = fleet_windows(devices=2, tags=1, hours=2)
    one = windows[windows["device_id"] == "dev-0001"].head(1)
    landed = pd.concat([windows, one, one], ignore_index=True)  # two exact copies of one window
    checked = check_windows(landed)
    hour = one["window_end"].dt.floor("h").iloc[0].isoformat()
    assert subset_of(["dev-0001", "dev-0001"], []) == Subset(devices=("dev-0001",), tags=())
    assert subset_of([], None) is None  # negative: no devices, no tags is a full run
    assert duplicates_by_sensor(landed, checked.valid, checked.quarantined) == {
        hour: (SensorDuplicates(device_id="dev-0001", tag="temperature", duplicates=2),)
    }
    plain = check_windows(windows)
    assert duplicates_by_sensor(windows, plain.valid, plain.quarantined) == {}  # negative: no duplicates
    keyless = pd.concat([windows, one.assign(device_id=None)], ignore_index=True)  # quarantined, not a duplicate
    checked = check_windows(keyless)
    assert len(checked.quarantined) == 1
    assert duplicates_by_sensor(keyless, checked.valid, checked.quarantined) == {}


def test_subset_matches_fail_on_nothing_and_warn_on_names_not_found():
    windows = fleet_windows(devices=2, tags=2, hours=1)
    where = "[h, h+1)"
    assert check_subset_matches((windows,), None, None, interval=where) is None  # a full run: nothing to check
    assert check_subset_matches((windows,), ["dev-0001"], ["pressure"], interval=where) is None
    missing = check_subset_matches((windows, windows.iloc[0:0]), ["dev-0001", "dev-0009"], [], interval=where)
    assert missing == Subset(devices=("dev-0009",), tags=())
    with pytest.raises(SubsetMatchesNothing, match=r"'PRESSURE' is no landed tag \(closest: pressure\)"):
        check_subset_matches((windows,), [], ["PRESSURE"], interval=where)
    one = windows[~((windows["device_id"] == "dev-0000") & (windows["tag"] == "pressure"))]
    with pytest.raises(SubsetMatchesNothing, match="no landed sensor has both a named device and tag"):
        check_subset_matches((one,), ["dev-0000"], ["pressure"], interval=where)  # each name landed, not together
    with pytest.raises(SubsetMatchesNothing, match=r"no window landed in \[h, h\+1\) at all"):
        check_subset_matches((windows.iloc[0:0],), ["dev-0000"], [], interval=where)
    rejected = pd.DataFrame({"device_id": ["dev-0042"], "tag": ["pressure"]})  # a row the reader rejected landed too
    assert check_subset_matches((windows, rejected), ["dev-0042"], [], interval=where) is None


def test_key_codes_match_across_tables_with_missing_parts():
    frame = pd.DataFrame(
        {
            "device_id": ["d", None, "d"],
            "tag": ["t", "t", "t"],
            "window_end": pd.to_datetime(["2026-11-24T00:01Z", "2026-11-24T00:02Z", None], utc=True),
        }
    )
    again = frame.iloc[::-1].astype({"device_id": "object"}).reset_index(drop=True)
    other = frame.assign(window_end=frame["window_end"] + pd.Timedelta(minutes=1), tag="t")
    mine, same, moved, empty = key_codes([frame, again, other, frame.iloc[0:0]])
    assert np.isin(mine, same).all() and len(set(mine)) == 3  # keyless rows match their copies, and only them
    assert list(np.isin(mine, moved)) == [False, False, True]  # NaT + 1 min is NaT
    assert len(empty) == 0
    assert check_purged_policy("keep") == "keep"
    with pytest.raises(ValueError, match="keep, fail, drop"):
        check_purged_policy("shrink")


def test_params_reject_bad_subsets_and_partial_hours(sensor_dag):
    from airflow.sdk.exceptions import ParamValidationError

    ok = copy.deepcopy(sensor_dag.params)
    ok.update(
        {
            "devices": ["dev-0001"],
            "tags": ["pressure", "temperature"],
            "window_start": "2026-11-25T16:00:00Z",
            "window_end": "2026-11-25T19:00:00+00:00",
            "model_version": "v1",
        }
    )
    ok.validate()
    for cleared in ({"devices": None}, {"tags": None}):  # what the trigger form sends for a cleared textarea: all
        params = copy.deepcopy(sensor_dag.params)
        params.update(cleared)
        params.validate()
    for bad in (
        {"devices": "dev-0001"},
        {"devices": [""]},
        {"tags": [3]},
        {"devices": ["a", "a"]},
        {"window_start": "2026-11-25T16:30:00Z"},
        {"window_end": "yesterday"},
        {"sensors_per_shard": "ten"},
    ):
        with pytest.raises(ParamValidationError):  # rejected when set, as the trigger form and REST API do
            params = copy.deepcopy(sensor_dag.params)
            params.update(bad)
            params.validate()
    for name in sensor_dag.params:  # the trigger form explains every field
        param = sensor_dag.params.get_param(name)
        assert param.schema.get("title") and param.description, name


# --- the real DAG on Azurite ------------------------------------------------------------------------------------


@pytest.fixture
def two_versions(blob, containers):
    """Eight simulated hours of 3 devices x 2 sensors, a promoted version and a different second one, and
    trouble in the first rescored hour: one duplicate and one invalid window of the subset sensor, one
    duplicate and one invalid window of another sensor.
    """
    simulate_to_storage(
        blob,
        SimulationConfig(devices=3, tags=2, seed=5),
        START,
        START + 8 * H,
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    train_and_register(blob, containers, START, FIRST, version="v-one", promote=True, features="context-v1")
    # the window's own aggregates (window-v1), so the parity below can be computed from the partition's columns;
    # a version of the older set rescoring beside a context-v1 production version, as after an upgrade
    _, trained = train_and_register(
        blob, containers, START, START + 3 * H, version="v-two", nu=0.2, features="window-v1"
    )
    existing = blob.list(containers.windows, f"{FIRST:%Y/%m/%d/%H}/")
    found = pd.concat([parse_window_file(b.name, blob.read_bytes(containers.windows, b.name)) for b in existing])
    at = found["window_end"] == pd.Timestamp(FIRST + timedelta(minutes=10))
    mine = found[at & (found["device_id"] == SUBSET[0]) & (found["tag"] == SUBSET[1])].head(1)
    other = found[at & (found["device_id"] == "dev-0002") & (found["tag"] == "pressure")].head(1)
    trouble = pd.concat(
        [
            mine,
            other,
            mine.assign(window_end=FIRST + timedelta(minutes=30, seconds=30), value_std=-1.0),
            other.assign(window_end=FIRST + timedelta(minutes=40, seconds=30), value_std=-1.0),
        ]
    )
    blob.write_bytes(containers.windows, f"{FIRST:%Y/%m/%d/%H}/0_extra_1.json", to_asa_json_lines(trouble))
    return {(m.device_id, m.tag): m.pipeline for m in trained}


def asset_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent, AssetModel)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetEvent.source_run_id == run_id)
            .all()
        )
        return [
            {"name": asset.name, "uri": asset.uri, "task_id": event.source_task_id, "extra": event.extra}
            for event, asset in rows
        ]


@pytest.mark.azurite
@pytest.mark.airflow
def test_subset_rescoring_replaces_only_the_chosen_sensors(sensor_dag, blob, containers, two_versions):
    hours = [FIRST, FIRST + H]
    window = {"window_start": FIRST.isoformat(), "window_end": (FIRST + 2 * H).isoformat()}
    full = sensor_dag.test(logical_date=FIRST + H, run_conf={**window, "sensors_per_shard": 4})
    assert str(full.state) == "success"
    before = {h: read_partition(blob, containers.predictions, h) for h in hours}
    q_before = {h: read_partition(blob, containers.quarantine, h)[0] for h in hours}
    first_manifest = before[FIRST][1]
    assert first_manifest["counts"] == {
        "landed": 364,
        "scored": 360,
        "quarantined": 2,
        "duplicates": 2,
        "anomalies": int(before[FIRST][0]["is_anomaly"].sum()),
    }
    assert first_manifest["subset"] is None and first_manifest["rescored"] == []
    assert first_manifest["model_versions"] == {"v-one": 360}
    assert sorted((d["device_id"], d["tag"], d["duplicates"]) for d in first_manifest["duplicates_by_sensor"]) == [
        ("dev-0000", "temperature", 1),
        ("dev-0002", "pressure", 1),
    ]
    # the asset event names the hours, run, model version and counts
    [event] = asset_events(full.run_id)
    assert event["name"] == "predictions" and event["task_id"] == "commit"
    assert event["extra"]["hours"] == [h.isoformat() for h in hours]
    assert event["extra"]["run_id"] == full.run_id and event["extra"]["model_version"] == "v-one"
    assert event["extra"]["counts"][FIRST.isoformat()] == first_manifest["counts"]

    # rescoring one sensor of both hours with another model version
    sensor_dag_2 = reload(sensor_dag)
    sub = sensor_dag_2.test(
        logical_date=FIRST + H,
        run_conf={**window, "devices": [SUBSET[0]], "tags": [SUBSET[1]], "model_version": "v-two"},
    )
    assert str(sub.state) == "success" and sub.run_id != full.run_id
    for h in hours:
        old, old_manifest = before[h]
        new, manifest = read_partition(blob, containers.predictions, h)
        in_old = (old["device_id"] == SUBSET[0]) & (old["tag"] == SUBSET[1])
        in_new = (new["device_id"] == SUBSET[0]) & (new["tag"] == SUBSET[1])
        # every other row exactly as before, the subset's rows new and from the other version
        pd.testing.assert_frame_equal(
            old[~in_old].sort_values(KEY).reset_index(drop=True), new[~in_new].sort_values(KEY).reset_index(drop=True)
        )
        assert in_new.sum() == in_old.sum() == 60
        rows = new[in_new]
        assert set(rows["model_version"]) == {"v-two"} and set(rows["run_id"]) == {sub.run_id}
        assert (rows["scored_at"] > old["scored_at"].max()).all()
        pipeline = two_versions[SUBSET]
        np.testing.assert_allclose(
            rows["score"], pipeline.decision_function(feature_matrix(rows)), rtol=1e-9, atol=1e-12
        )
        assert not new.duplicated(KEY).any() and len(new) == len(old)
        # counts still mean the whole partition, and still close
        counts = manifest["counts"]
        assert {k: counts[k] for k in ("landed", "scored", "quarantined", "duplicates")} == {
            k: old_manifest["counts"][k] for k in ("landed", "scored", "quarantined", "duplicates")
        }
        assert counts["anomalies"] == int(new["is_anomaly"].sum())
        assert counts["landed"] == counts["scored"] + counts["quarantined"] + counts["duplicates"]
        assert manifest["run_id"] == sub.run_id and manifest["model_version"] == "v-two"
        assert manifest["model_versions"] == {"v-one": 300, "v-two": 60}
        assert manifest["subset"] == {"devices": [SUBSET[0]], "tags": [SUBSET[1]]}
        [entry] = manifest["rescored"]
        assert entry["run_id"] == sub.run_id and entry["model_version"] == "v-two"
        assert entry["devices"] == [SUBSET[0]] and entry["tags"] == [SUBSET[1]]
        assert entry["counts"]["scored"] == 60
        assert (
            entry["counts"]["landed"]
            == entry["counts"]["scored"] + entry["counts"]["quarantined"] + entry["counts"]["duplicates"]
        )
        # quarantine: the other sensor's row kept as it was, the subset's row re-quarantined by this run
        q_new, _ = read_partition(blob, containers.quarantine, h)
        q_old = q_before[h]
        assert len(q_new) == len(q_old)
        keep_old = q_old[~((q_old["device_id"] == SUBSET[0]) & (q_old["tag"] == SUBSET[1]))]
        keep_new = q_new[~((q_new["device_id"] == SUBSET[0]) & (q_new["tag"] == SUBSET[1]))]
        pd.testing.assert_frame_equal(
            keep_old.sort_values(KEY).reset_index(drop=True), keep_new.sort_values(KEY).reset_index(drop=True)
        )
        assert set(q_new.loc[q_new["device_id"] == SUBSET[0], "run_id"]) <= {sub.run_id}
    first = read_partition(blob, containers.predictions, FIRST)[1]
    assert first["rescored"][0]["counts"] == {
        "landed": 62,
        "scored": 60,
        "quarantined": 1,
        "duplicates": 1,
        "anomalies": first["rescored"][0]["counts"]["anomalies"],
    }

    # a second rescoring, by tag only and back on production, is added to the history
    third = reload(sensor_dag).test(logical_date=FIRST + H, run_conf={**window, "tags": ["temperature"]})
    assert str(third.state) == "success"
    new, manifest = read_partition(blob, containers.predictions, FIRST)
    assert [e["run_id"] for e in manifest["rescored"]] == [sub.run_id, third.run_id]
    assert manifest["rescored"][1]["tags"] == ["temperature"] and manifest["rescored"][1]["devices"] == []
    assert manifest["model_versions"] == {"v-one": 360}
    assert manifest["counts"]["landed"] == first_manifest["counts"]["landed"]
    assert manifest["counts"]["duplicates"] == 2
    pressure_old = before[FIRST][0].query("tag == 'pressure'").sort_values(KEY).reset_index(drop=True)
    pressure_new = new.query("tag == 'pressure'").sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(pressure_old, pressure_new)
    [event] = asset_events(third.run_id)
    assert event["extra"]["subset"] == {"devices": [], "tags": ["temperature"]}


@pytest.mark.azurite
@pytest.mark.airflow
def test_rescoring_a_purged_hour_keeps_its_predictions_and_a_subset_matching_nothing_fails(
    sensor_dag, blob, containers, two_versions, capfd, caplog
):
    """Through the DAG: a rescoring with names that match no landed sensor fails in commit (no retry: the read
    tasks only route the windows, commit sums what they found) naming the closest names, committing nothing; after
    a lifecycle rule purged the hour's windows, a rescoring with another model version and purged_windows=fail
    fails in commit naming the hour and counts, and by default keeps every committed row (the manifest's purged
    says how many)."""
    window = {"window_start": FIRST.isoformat(), "window_end": (FIRST + H).isoformat()}
    assert str(sensor_dag.test(logical_date=FIRST + H, run_conf=window).state) == "success"
    before, committed = read_partition(blob, containers.predictions, FIRST)
    q_before, _ = read_partition(blob, containers.quarantine, FIRST)

    nothing = reload(sensor_dag).test(logical_date=FIRST + H, run_conf={**window, "tags": ["Temperature"]})
    assert str(nothing.state) == "failed"
    states = {ti.task_id: (str(ti.state), ti.try_number) for ti in nothing.get_task_instances()}
    assert states["commit"] == ("failed", 1)
    out = capfd.readouterr()
    assert "'Temperature' is no landed tag (closest: temperature)" in out.out + out.err + caplog.text
    assert read_partition(blob, containers.predictions, FIRST)[1] == committed

    for name in [b.name for b in blob.list(containers.windows, f"{FIRST:%Y/%m/%d/%H}/")]:
        blob.delete_prefix(containers.windows, name)  # the lifecycle rule
    conf = {**window, "model_version": "v-two"}
    refused = reload(sensor_dag).test(logical_date=FIRST + H, run_conf={**conf, "purged_windows": "fail"})
    assert str(refused.state) == "failed"
    states = {ti.task_id: (str(ti.state), ti.try_number) for ti in refused.get_task_instances()}
    assert states["commit"] == ("failed", 1)  # no retry: the windows will not come back
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    # the windows that landed late in the next (younger) folder are still there: those few are found again
    found = re.search(rf"hour {re.escape(FIRST.isoformat())}: (\d+) committed prediction\(s\) and 2 quarantined", text)
    assert found and 300 < int(found.group(1)) < 360
    gone = int(found.group(1))
    assert read_partition(blob, containers.predictions, FIRST)[1] == committed

    kept = reload(sensor_dag).test(logical_date=FIRST + H, run_conf=conf)
    assert str(kept.state) == "success"
    after, manifest = read_partition(blob, containers.predictions, FIRST)
    assert len(after) == 360 and not after.duplicated(KEY).any()
    old_rows = after[after["run_id"] == committed["run_id"]]
    assert len(old_rows) == gone  # kept exactly as committed, the found ones rescored with v-two
    pd.testing.assert_frame_equal(
        before.merge(old_rows[KEY], on=KEY).sort_values(KEY).reset_index(drop=True),
        old_rows.sort_values(KEY).reset_index(drop=True),
    )
    assert manifest["model_versions"] == {"v-one": gone, "v-two": 360 - gone}
    q_after, _ = read_partition(blob, containers.quarantine, FIRST)
    assert len(q_after) == len(q_before) == 2
    counts = manifest["counts"]
    assert (counts["scored"], counts["quarantined"], counts["duplicates"]) == (360, 2, 0)  # copies are not rows
    assert counts["landed"] == counts["scored"] + counts["quarantined"] + counts["duplicates"]
    assert manifest["purged"]["action"] == "kept" and manifest["purged"]["scored"] == gone
    assert manifest["purged"]["quarantined"] == 2 and manifest["purged"]["runs"] == [committed["run_id"]]
    assert manifest["status"] == "scored"


def test_purged_windows_param_offers_exactly_the_policies(sensor_dag):
    from sensor_scoring.runs.rescoring import DEFAULT_PURGED_POLICY, PURGED_POLICIES

    param = sensor_dag.params.get_param("purged_windows")
    assert tuple(param.schema["enum"]) == PURGED_POLICIES and param.value == DEFAULT_PURGED_POLICY


def reload(dag):
    """The DAG afresh (an in-process run merges its conf into the Param objects; see the sensor_dag fixture)."""
    from dev.demo import load_dag
    from tests.conftest import REPO

    return load_dag(REPO / "dags" / "sensor_scoring.py")


def test_ui_explains_itself(sensor_dag):
    """The DAG page and each task's docs say what, who and how to triage; commit feeds the predictions asset."""
    doc = sensor_dag.doc_md
    for words in ("Owner", "Triage", "Rescoring", "Backfill", "scoring_smtp", "scoring_alert_webhook", "predictions"):
        assert words in doc, words
    assert sensor_dag.owner == "sensor-analytics" and "scoring" in sensor_dag.tags
    for name in ("wait_for_windows", "plan_shards", "read_windows", "commit"):
        assert "Triage" in sensor_dag.task_dict[name].doc_md, name
    [asset] = sensor_dag.task_dict["commit"].outlets
    assert (asset.name, asset.uri) == ("predictions", "x-scoring://predictions")
