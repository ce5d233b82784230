"""The raw-readings import: every line is a reading or rejected with its number and reason, never dropped unseen."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pandas as pd
import pytest

from sensor_scoring.storage import LocalStorage
from sensor_scoring.tools.ingest import IngestRejected, ingest_readings_csv, read_raw_readings
from tests.conftest import REPO

#: 18 data lines: 13 readings, 1 blank Value (a reading without a value), 4 lines that are no reading.
RAW = """TS,Device,Tag,Value
2018-08-28 23:00:05.000,Machine1,Pressure,1.5
2018-08-28 23:00:15.000,Machine1,Pressure,2.5
2018-08-28 23:00:25.000,Machine1,Pressure,abc
2018-08-28 23:00:35.000,Machine1,Pressure,3.5
2018-08-28 23:00:45.000,Machine1,Pressure,
2018-08-28 23:00:55.000,Machine1,Pressure,4.5
2018-08-28 23:01:05.000,Machine1,Pressure,5.5
2018-02-30 23:01:15.000,Machine1,Pressure,6.5
2018-08-28 23:01:25.000,Machine1,Pressure,7.5
2018-08-28 23:01:35.000,,Pressure,8.5
2018-08-28T23:01:45Z,Machine1,Pressure,9.5
2018-08-29 01:01:55+02:00,Machine1,Pressure,1e1
2018-08-28 23:02:05.000,Machine1,Pressure,NaN
2018-08-28 23:02:15.000,Machine1,Temperature,20
2018-08-28 23:02:25.000,Machine1,Temperature,-1.25
2018-08-28 23:02:35.000,Machine1,Temperature,.5
2018-08-28 23:02:45.000,Machine1,Temperature,21
2018-08-28 23:02:55.000,Machine1,Temperature,22
"""
EXPECTED = [(4, "bad_value"), (9, "bad_timestamp"), (11, "missing_key"), (14, "non_finite_value")]


def test_every_line_is_a_reading_or_rejected_with_its_number_and_reason(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_text(RAW)
    raw = read_raw_readings(path)
    assert raw.lines == 18 and len(raw.readings) == 14 and raw.null_values == 1
    assert [(r.line, r.reason) for r in raw.rejected] == EXPECTED
    assert raw.rejected[0].text == "2018-08-28 23:00:25.000,Machine1,Pressure,abc"
    # a zone-less TS is UTC, one with a zone is converted; 1e1 and .5 are decimal numbers
    assert pd.Timestamp("2018-08-28T23:01:55Z") in set(raw.readings["ts"])
    assert {10.0, 0.5} <= set(raw.readings["value"].dropna())


def test_rejected_lines_are_reported_counted_apart_and_strict_lands_nothing(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_text(RAW)
    storage = LocalStorage(tmp_path / "store")
    with pytest.raises(IngestRejected, match=r"4 of 18 line\(s\) rejected .*first: line 4, bad_value"):
        ingest_readings_csv(storage, "windows", path, strict=True)
    assert not storage.list("windows")  # strict: nothing landed
    facts = ingest_readings_csv(storage, "windows", path)
    assert facts["lines"] == 18 and facts["readings"] == 14 and facts["rejected"] == 4 and facts["null_values"] == 1
    assert facts["rejected_by_reason"] == {"bad_timestamp": 1, "missing_key": 1, "bad_value": 1, "non_finite_value": 1}
    assert facts["windows"] == 3  # Pressure 23:01 and 23:02 (its 23:02:05 reading was NaN), Temperature 23:03
    with open(facts["rejected_report"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert facts["rejected_report"] == str(tmp_path / "readings.rejected.csv")
    assert [(int(r["line"]), r["reason"]) for r in rows] == EXPECTED and rows[0]["error"] == "Value 'abc'"


def test_a_clean_import_empties_an_earlier_report_and_makes_none_otherwise(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_text(RAW)
    storage = LocalStorage(tmp_path / "store")
    report = tmp_path / "readings.rejected.csv"
    ingest_readings_csv(storage, "windows", path)
    assert len(report.read_text().splitlines()) == 1 + 4
    path.write_text("\n".join(RAW.splitlines()[:4:2]) + "\n")  # the header and one good line
    facts = ingest_readings_csv(storage, "windows", path)
    assert facts["rejected"] == 0 and facts["rejected_report"] is None
    assert report.read_text().splitlines() == ["line,reason,error,text"]  # not left stale
    clean = tmp_path / "clean.csv"
    clean.write_text("TS,Device,Tag,Value\n2018-08-28 23:00:05.000,Machine1,Pressure,1.5\n")
    ingest_readings_csv(storage, "windows", clean)
    assert not (tmp_path / "clean.rejected.csv").exists()


def test_wrong_field_count_and_a_file_of_another_layout(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("TS,Device,Tag,Value\n2018-08-28 23:00:05.000,Machine1,Pressure\n\n")
    [line] = read_raw_readings(path).rejected
    assert (line.line, line.reason, line.text) == (2, "wrong_field_count", "2018-08-28 23:00:05.000,Machine1,Pressure")
    other = tmp_path / "other.csv"
    other.write_text("time,device,value\n1,2,3\n")
    with pytest.raises(ValueError, match="missing TS, Device, Tag, Value"):
        read_raw_readings(other)


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "SCORING_STORAGE": str(tmp_path / "store")}
    return subprocess.run(
        [sys.executable, "-m", "sensor_scoring", "ingest-readings", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )


def test_cli_exits_non_zero_when_strict_and_counts_rejected_lines_otherwise(tmp_path):
    path = tmp_path / "readings.csv"
    path.write_text(RAW)
    report = tmp_path / "rejected" / "lines.csv"
    report.parent.mkdir()
    strict = _cli(tmp_path, str(path), "--strict", "--rejected", str(report))
    assert strict.returncode == 1 and "4 of 18 line(s) rejected" in strict.stderr and "Traceback" not in strict.stderr
    assert report.exists() and not (tmp_path / "store" / "windows").exists()
    lenient = _cli(tmp_path, str(path), "--rejected", str(report))
    assert lenient.returncode == 0, lenient.stderr
    answer = json.loads(lenient.stdout.strip().splitlines()[-1])
    assert answer["readings"] == 14 and answer["rejected"] == 4 and answer["rejected_report"] == str(report)
    assert "4 of 18 line(s) rejected" in lenient.stderr
    missing = _cli(tmp_path, str(tmp_path / "none.csv"))
    assert missing.returncode == 1 and "ingest-readings:" in missing.stderr and "Traceback" not in missing.stderr
