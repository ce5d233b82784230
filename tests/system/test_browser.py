"""The Airflow UI in a real browser: Debian's headless Chromium driven by Playwright's Python package.

No browser is ever downloaded: Playwright launches ``/usr/bin/chromium`` (installed by ``make browser-deps``,
a prerequisite of ``make test``). The server is the shared ``airflow standalone`` of tests/standalone_stack.py.
Screenshots go to ``test-artifacts/`` (ignored by git) for a person to look at.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
from playwright.sync_api import expect

from sensor_scoring import settings as config
from sensor_scoring.layout import MANIFEST_FILE, PARTITION_FILE, partition_prefix
from tests.support.standalone_stack import H, Standalone

pytestmark = [pytest.mark.browser, pytest.mark.standalone]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("SCORING_CHROMIUM", "/usr/bin/chromium"))
# Headless, and nothing that phones home: this runs on closed networks where such calls only hang.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make browser-deps` (apt-get install chromium); "
            "Playwright's own browser downloads are not used"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        # the browser really is Debian's (Playwright's repr names its own download path, never used here)
        debian = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, timeout=60).stdout
        assert browser.version in debian, (browser.version, debian)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(browser, standalone: Standalone):
    """One logged-in page for the module: the simple auth manager's login form, then the DAG list."""
    context = browser.new_context(viewport={"width": 1400, "height": 1500})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page.goto(f"{standalone.stack.url}/")
        page.wait_for_url("**/auth/login**")  # not logged in yet: the UI sends us to the login page
        page.fill("input[name=username]", standalone.stack.username)
        page.fill("input[name=password]", standalone.stack.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/login" not in url)
        page.goto(f"{standalone.stack.url}/dags")
        page.get_by_role("link", name="sensor_scoring").first.wait_for()
        page.screenshot(path=ARTIFACTS / "browser-01-dags.png")
        yield page
    except Exception:
        page.screenshot(path=ARTIFACTS / "browser-failed-login.png")
        raise
    finally:
        context.close()


def param_titles(standalone: Standalone) -> dict[str, tuple[str, str]]:
    """Each param's title and description as the API serves them: what the trigger form must render."""
    params = standalone.api.get("dags/sensor_scoring/details")["params"]
    return {
        name: (spec["schema"]["title"], spec.get("description") or spec["schema"].get("description", ""))
        for name, spec in params.items()
    }


def test_trigger_form_shows_the_params_with_titles(page, standalone: Standalone):
    page.goto(f"{standalone.stack.url}/dags/sensor_scoring")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    dialog.get_by_text("Single Run", exact=True).wait_for()
    titles = param_titles(standalone)
    assert {"window_start", "window_end", "devices", "tags", "model_version", "sensors_per_shard", "backend"} <= set(
        titles
    )
    marked = {}
    for name, (title, description) in titles.items():
        # the label is the title, with a "*" when the param is required
        label = dialog.locator("label").filter(has_text=re.compile(rf"^\s*{re.escape(title)}\s*\*?\s*$")).first
        label.wait_for()
        marked[name] = "*" in label.inner_text()
        if description:
            dialog.get_by_text(description).first.wait_for()
    # an empty subset or window means "all" / "the run's interval": the form must not demand them
    # an empty sensors_per_shard sizes the shards to the work: not demanded either
    assert not any(marked[name] for name in ("devices", "tags", "window_start", "window_end", "sensors_per_shard"))
    assert marked["backend"] and marked["model_version"], marked  # negative: a real required field is marked
    dialog.screenshot(path=ARTIFACTS / "browser-02-trigger-form.png")
    dialog.get_by_text("Backfill", exact=True).click()  # the same form creates backfills
    dialog.get_by_text("Reprocess Behavior").first.wait_for()
    dialog.screenshot(path=ARTIFACTS / "browser-03-backfill-form.png")
    page.keyboard.press("Escape")


def pick_time(page, dialog, when: datetime) -> None:
    """Airflow's date-time picker: the first empty field opens a popover with Date and Time inputs (UTC)."""
    date, time = page.get_by_placeholder("YYYY/MM/DD"), page.get_by_placeholder("HH:mm")
    dialog.get_by_text("Select date and time").first.click()
    date.fill(when.strftime("%Y/%m/%d"))
    time.fill(when.strftime("%H:%M"))
    page.keyboard.press("Escape")  # closes the popover, not the dialog
    expect(date).to_have_count(0)  # gone before the next picker opens (it lingers while it animates out)


def test_trigger_form_starts_a_subset_rescoring(page, standalone: Standalone):
    """What an operator does: fill the form (window, one device, another model version) and press Trigger."""
    hour = standalone.landed_hours[1]  # an hour no other test scores
    page.goto(f"{standalone.stack.url}/dags/sensor_scoring")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    pick_time(page, dialog, hour)  # Window start
    pick_time(page, dialog, hour + H)  # Window end
    dialog.locator("textarea[name=element_devices]").fill("dev-0002")
    dialog.locator("input[name=element_model_version]").fill("v-alt")
    dialog.screenshot(path=ARTIFACTS / "browser-06-rescoring-filled.png")
    dialog.get_by_role("button", name="Trigger").click()
    dialog.wait_for(state="hidden")

    [run] = [r for r in standalone.api.runs(run_type="manual") if (r["conf"] or {}).get("devices") == ["dev-0002"]]
    assert pd.Timestamp(run["conf"]["window_start"]) == pd.Timestamp(hour)
    assert pd.Timestamp(run["conf"]["window_end"]) == pd.Timestamp(hour + H)
    assert run["conf"]["model_version"] == "v-alt" and run["conf"]["tags"] == []
    done = standalone.api.wait_for_runs([run["dag_run_id"]], timeout_s=240)[run["dag_run_id"]]  # ~30 s idle
    assert done["state"] == "success", done
    prefix, container = partition_prefix(hour), config.Containers().predictions
    frame = pd.read_parquet(io.BytesIO(standalone.storage.read_bytes(container, prefix + PARTITION_FILE)))
    manifest = json.loads(standalone.storage.read_bytes(container, prefix + MANIFEST_FILE))
    # the hour had never been scored: a subset rescoring writes the subset's rows only, and says so
    assert len(frame) == 2 * 60 and set(frame["device_id"]) == {"dev-0002"}
    assert set(frame["model_version"]) == {"v-alt"} and set(frame["run_id"]) == {run["dag_run_id"]}
    assert manifest["subset"] == {"devices": ["dev-0002"], "tags": []}


def test_run_shows_its_mapped_shards_named_by_sensors(page, standalone: Standalone, full_run: dict):
    run_id = full_run["dag_run_id"]
    shards = [t for t in standalone.api.task_instances(run_id) if t["task_id"] == "score_shard"]
    labels = sorted(t["rendered_map_index"] for t in shards)
    assert len(labels) == 3 and all("dev-000" in label and "/pressure" in label for label in labels)

    page.goto(f"{standalone.stack.url}/dags/sensor_scoring/runs")
    page.get_by_role("link", name=run_id).first.click()  # open the run from the runs list
    page.wait_for_url(lambda url: "/dags/sensor_scoring/runs/" in url, wait_until="commit")  # client-side routing
    page.get_by_text("Run Type").first.wait_for()
    page.get_by_text("Task Instances").first.click()
    for label in labels:
        page.get_by_text(label, exact=True).first.wait_for()
    page.screenshot(path=ARTIFACTS / "browser-04-run-task-instances.png", full_page=True)

    page.goto(f"{standalone.stack.url}/dags/sensor_scoring/runs/{quote(run_id)}/tasks/score_shard/mapped")
    for label in labels:
        page.get_by_text(label, exact=True).first.wait_for()
    page.get_by_text("Total Success").first.wait_for()
    page.screenshot(path=ARTIFACTS / "browser-05-mapped-shards.png", full_page=True)


def test_backfill_form_creates_a_backfill_that_scores_the_hour(page, standalone: Standalone):
    """The operator's backfill: the Backfill tab of the trigger dialog, a date range of one hour, Run Backfill."""
    hour = standalone.landed_hours[0]  # no other test scores it
    scheduled = standalone.scheduled_run()  # waiting for its hour's windows while the backfill runs
    page.goto(f"{standalone.stack.url}/dags/sensor_scoring")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Backfill", exact=True).click()
    dialog.get_by_text("Reprocess Behavior").first.wait_for()
    pick_time(page, dialog, hour)  # From (logical date = the hour's start)
    pick_time(page, dialog, hour)  # To, inclusive: one run
    dialog.get_by_text("1 run will be triggered").wait_for()  # the form's own dry run agrees
    dialog.get_by_text("All Runs", exact=True).click()
    dialog.screenshot(path=ARTIFACTS / "browser-07-backfill-filled.png")
    dialog.get_by_role("button", name="Run Backfill").click()
    dialog.wait_for(state="hidden")

    backfill = standalone.latest_backfill()
    assert datetime.fromisoformat(backfill["from_date"]) == hour == datetime.fromisoformat(backfill["to_date"])
    assert backfill["reprocess_behavior"] == "completed"
    [run] = standalone.wait_for_backfill_runs([hour])
    assert run["state"] == "success", run
    assert standalone.api.run(scheduled["dag_run_id"])["state"] == "running"
    standalone.wait_backfill_done(backfill["id"])
    prefix, container = partition_prefix(hour), config.Containers().predictions
    assert sorted(b.name for b in standalone.storage.list(container, prefix)) == [
        prefix + MANIFEST_FILE,
        prefix + PARTITION_FILE,
    ]
    manifest = json.loads(standalone.storage.read_bytes(container, prefix + MANIFEST_FILE))
    counts = manifest["counts"]
    assert manifest["run_id"] == run["dag_run_id"] and counts["scored"] > 0
    assert counts["landed"] == counts["scored"] + counts["quarantined"] + counts["duplicates"]
