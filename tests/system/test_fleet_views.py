"""The fleet and sensor pages in a real browser (Debian's Chromium, Playwright) on the shared dev stack's API server.

Hours scored by real runs of the scheduler (the session's ``full_run`` and a run of an hour of this module's own,
``landed_hours[6]``; the simulator injects labelled anomalies), then both pages opened through the UI's login: the
heatmap's cells equal the anomalies of the committed partitions per hour and device, and the sensor chart marks
exactly the sensor's anomalous windows. Screenshots go to ``test-artifacts/`` (ignored by git):
``fleet-01-page.png``, ``fleet-02-in-ui.png`` (the page inside the UI's frame), ``fleet-03-sensor.png``.
A request without the login cookie is refused.
"""

from __future__ import annotations

import io
import re
import urllib.error
import urllib.request
from urllib.parse import urlencode

import pandas as pd
import pytest

from sensor_scoring.layout import Partition
from tests.support.standalone_stack import H, Standalone
from tests.system.test_browser import ARTIFACTS, browser, page  # noqa: F401 (the fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.standalone]


@pytest.fixture(scope="module")
def own_hour(standalone: Standalone, full_run) -> list:
    """This module's hour scored by the scheduler; returns the hours with committed partitions in the range."""
    hour = standalone.landed_hours[6]
    run = standalone.api.trigger({"window_start": hour.isoformat(), "window_end": (hour + H).isoformat()})
    finished = standalone.api.wait_for_runs([run["dag_run_id"]], timeout_s=300)[run["dag_run_id"]]
    assert finished["state"] == "success", finished
    return [full_run["hour"], hour]


def predictions_of(standalone: Standalone, hour) -> pd.DataFrame:
    from sensor_scoring import settings as config

    data = standalone.storage.read_bytes(config.Containers().predictions, Partition(hour).data)
    return pd.read_parquet(io.BytesIO(data))


def test_pages_show_the_scored_anomalies(page, standalone: Standalone, own_hour):  # noqa: F811
    start, end = standalone.landed_hours[0], standalone.landed_hours[-1] + H
    base = f"{standalone.stack.url}/scoring"
    page.goto(f"{base}/fleet?{urlencode({'start': start.isoformat(), 'end': end.isoformat()})}")
    page.locator("svg.heatmap").wait_for()
    page.screenshot(path=ARTIFACTS / "fleet-01-page.png", full_page=True)
    cells = {
        (c.get_attribute("data-hour"), c.get_attribute("data-device")): int(c.get_attribute("data-anomalies"))
        for c in page.locator("rect.cell").all()
    }
    flagged = 0
    for hour in own_hour:
        frame = predictions_of(standalone, hour)
        for device, n in frame.groupby("device_id")["is_anomaly"].sum().items():
            assert cells[(pd.Timestamp(hour).isoformat(), device)] == n, (hour, device)
            flagged += int(n)
    assert flagged > 0, "the simulated hours carry anomalies"
    runs = page.locator("ul.runs a")
    assert runs.count() >= len(own_hour) and "/dags/sensor_scoring/runs/" in runs.first.get_attribute("href")

    # the navigation entry shows the page inside the UI
    page.goto(f"{standalone.stack.url}/plugin/sensor-fleet")
    page.frame_locator("iframe").first.locator("svg.heatmap").wait_for()
    page.screenshot(path=ARTIFACTS / "fleet-02-in-ui.png", full_page=True)

    frame = predictions_of(standalone, own_hour[-1])
    device, tag = frame.groupby(["device_id", "tag"])["is_anomaly"].sum().idxmax()
    mine = frame[(frame["device_id"] == device) & (frame["tag"] == tag)]
    hour = own_hour[-1]
    query = urlencode({"device_id": device, "tag": tag, "start": hour.isoformat(), "end": (hour + H).isoformat()})
    page.goto(f"{base}/sensor?{query}")
    page.locator("svg.scores").wait_for()
    page.screenshot(path=ARTIFACTS / "fleet-03-sensor.png", full_page=True)
    marked = {c.get_attribute("data-window-end") for c in page.locator("circle.anomaly").all()}
    expected = {pd.Timestamp(t).isoformat() for t in mine.loc[mine["is_anomaly"], "window_end"]}
    assert marked == expected and len(marked) > 0
    assert page.locator("line.threshold").count() == 1
    assert re.search(r"v-e2e: trained on ", page.content())


def test_pages_refuse_a_request_without_login(standalone: Standalone):
    for path in ("/scoring/api/fleet", "/scoring/api/sensor?device_id=dev-0000&tag=temperature"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{standalone.stack.url}{path}", timeout=30)
        assert refused.value.code == 401
