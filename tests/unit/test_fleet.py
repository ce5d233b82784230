"""Fleet queries and the report on hours without health: every hour named as missing, the page still renders;
ranges the pages refuse are refused with the reason."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from sensor_scoring import fleet, report, settings as config
from sensor_scoring.storage import LocalStorage
from tests.support.helpers import START


def test_hours_without_health_are_named_and_the_report_renders(tmp_path):
    storage, containers = LocalStorage(tmp_path), config.Containers()
    view = fleet.fleet_view(storage, containers, START, START + timedelta(hours=3))
    assert view.missing_hours == view.hours and view.heatmap.empty and view.drifting.empty
    text, facts = report.build_report(storage, containers, START, START + timedelta(hours=3))
    assert facts["hours_without_health"] == 3 and facts["sensors"] == []
    assert "No health for 3 hour(s)" in text and text.endswith("</html>")
    sensor = fleet.sensor_view(storage, containers, "d", "t", START, START + timedelta(hours=1))
    assert sensor.windows.empty and "no scored windows" in report.score_svg(sensor)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (START, START, "not after"),
        (START, START + timedelta(minutes=30), "whole UTC hours"),
        (START, START + timedelta(days=8), "at most 168"),
    ],
)
def test_refused_ranges(tmp_path, start, end, message):
    with pytest.raises(fleet.RangeError, match=message):
        fleet.fleet_view(LocalStorage(tmp_path), config.Containers(), start, end)


def test_text_is_escaped():
    assert report.esc("<script>") == "&lt;script&gt;"


@pytest.mark.parametrize(
    ("text", "hour"),
    [
        ("2026-11-24T05:00Z", "2026-11-24T05:00:00+00:00"),
        ("2026-11-24T05:00", "2026-11-24T05:00:00+00:00"),
        ("2026-11-24", "2026-11-24T00:00:00+00:00"),
        ("2026-11-24T07:00+02:00", "2026-11-24T05:00:00+00:00"),
        ("2026-11-24T00:00-05:00", "2026-11-24T05:00:00+00:00"),
    ],
)
def test_bounds_are_utc_hours_whatever_the_offset(text, hour):
    parsed = fleet.parse_bound(text, "start")
    assert parsed.isoformat() == hour and parsed.tzinfo is timezone.utc


def test_default_range_is_the_last_day_up_to_the_end_of_the_current_hour():
    now = START + timedelta(hours=30, minutes=17)
    hours = fleet.request_range(None, None, fleet.MAX_FLEET_HOURS, now=now)
    assert len(hours) == 24 and hours[-1] == START + timedelta(hours=30)
    assert len(fleet.request_range(None, None, fleet.MAX_SENSOR_HOURS, default_hours=48, now=now)) == 24


@settings(max_examples=300, deadline=None, database=None)
@given(
    start=st.one_of(st.none(), st.text(max_size=70), st.datetimes().map(lambda d: d.isoformat())),
    end=st.one_of(st.none(), st.text(max_size=70), st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())),
    limit=st.sampled_from([fleet.MAX_SENSOR_HOURS, fleet.MAX_FLEET_HOURS]),
)
def test_any_start_and_end_give_whole_utc_hours_within_the_limit_or_a_range_error(start, end, limit):
    try:
        hours = fleet.request_range(start, end, limit)
    except fleet.RangeError as exc:
        assert str(exc)
        return
    assert 1 <= len(hours) <= limit and all(h.tzinfo is timezone.utc and h.minute == 0 for h in hours)
