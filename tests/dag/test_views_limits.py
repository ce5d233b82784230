"""The fleet and sensor views, the report and the alerts against requests and names from people who do not mean
well: every parameter is checked before any read (4xx with the rule, never 5xx), no request reads more than the
documented cap, times are UTC hours however they are written, and names reach email and chat as text.

The store is a real directory storage holding two hours scored by the pipeline's own steps (load, plan, score,
commit, model health), one device named like a chat message that pings a channel and hides a link. The views are
asked through FastAPI's TestClient over the views' app with login replaced by a user (the login itself is tested
through the API server in tests/dag/test_fleet_data.py), and once through the Airflow API server's real app. The
storage object counts its reads and listings, so the bound is checked by construction, never by timing.
The cases are listed in docs/faults.md ("Views, report and alerts").
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
import tracemalloc
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sensor_scoring import fleet, settings as config
from sensor_scoring.cli import main as cli
from sensor_scoring.storage import LocalStorage
from sensor_scoring_airflow import views
from tests.conftest import REPO
from tests.support.helpers import START, fleet_windows, run_steps

H = timedelta(hours=1)
TRAIN_END = START + 3 * H
FIRST, END = TRAIN_END, TRAIN_END + 2 * H  # the two scored hours
HOSTILE = "<!channel> <https://evil.example/login|Open the runbook>"
TAG = "temperature"
ROUTES = ("/api/fleet", "/fleet", "/api/sensor", "/sensor")
ABSURD = {"start": "0001-01-01T00:00Z", "end": "9999-12-31T00:00Z"}


class CountingStorage(LocalStorage):
    """A directory storage that counts every read, existence check and listing the views make."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: Counter[str] = Counter()

    def read_bytes(self, container: str, path: str) -> bytes:
        self.calls["read_bytes"] += 1
        return super().read_bytes(container, path)

    def read_many(self, container: str, paths: Any, concurrency: int = 8) -> list[bytes]:
        self.calls["read_many"] += len(paths)
        return [super(CountingStorage, self).read_bytes(container, p) for p in paths]

    def exists(self, container: str, path: str) -> bool:
        self.calls["exists"] += 1
        return super().exists(container, path)

    def stat(self, container: str, path: str) -> Any:  # a blob opened for ranged reads (the sensor page)
        self.calls["stat"] += 1
        return super().stat(container, path)

    def read_range(self, container: str, path: str, offset: int, length: int, version: str | None = None) -> bytes:
        self.calls["read_range"] += 1
        return super().read_range(container, path, offset, length, version)

    def list(self, container: str, prefix: str = "") -> list:  # type: ignore[override]
        self.calls["list"] += 1
        return super().list(container, prefix)

    @property
    def reads(self) -> int:
        """Blobs read whole, checked, or opened for ranged reads (the ranges are counted apart)."""
        return self.calls["read_bytes"] + self.calls["read_many"] + self.calls["exists"] + self.calls["stat"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[CountingStorage, config.Containers]:
    """Two hours scored and their health written by the pipeline's steps on a directory storage; one device is
    named ``HOSTILE`` and one of its windows is quarantined (a negative spread)."""
    from sensor_scoring.runs.scope import Scope
    from sensor_scoring.steps.health import model_health
    from sensor_scoring.windows import land_windows
    from tests.support.training import train_and_register

    storage, containers = CountingStorage(tmp_path_factory.mktemp("store")), config.Containers()
    windows = fleet_windows(devices=2, tags=1, hours=5, seed=3)
    windows.loc[windows["device_id"] == "dev-0001", "device_id"] = HOSTILE
    late = windows.index[(windows["device_id"] == HOSTILE) & (windows["window_end"] > FIRST)]
    windows.loc[late[5], "value_std"] = -1.0
    land_windows(storage, containers.windows, windows)
    train_and_register(storage, containers, START, TRAIN_END, version="v1", promote=True)
    hour = Scope(storage, containers, "run-1", FIRST, END)
    run_steps(hour, sensors_per_shard=2)
    model_health(hour)
    return storage, containers


@pytest.fixture(scope="module")
def client(store):
    """The views' app over the store, as a logged-in user asks it."""
    from fastapi.testclient import TestClient

    app = views.create_app()
    app.dependency_overrides[views._user] = lambda: {"username": "admin"}
    patcher = pytest.MonkeyPatch()
    patcher.setattr(views, "_sources", lambda: store)
    try:
        yield TestClient(app, raise_server_exceptions=False)
    finally:
        patcher.undo()


def ask(client, store, route: str, params: dict[str, Any]):
    """One request; the store's counters start from zero for it."""
    store[0].calls.clear()
    return client.get(f"/{route.lstrip('/')}", params=params)


def rule_of(answer) -> str:
    """What a refusal says: ``detail`` of the JSON routes, the text of the pages' refusal (HTML-escaped)."""
    if answer.headers["content-type"].startswith("application/json"):
        detail = answer.json()["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)
    assert answer.text.startswith("<!doctype html>") and "<h1>Request refused</h1>" in answer.text
    return html.unescape(answer.text.split("<p class='refused'>", 1)[1].split("</p>", 1)[0])


def cap_of(route: str) -> int:
    return fleet.SENSOR_MAX_READS if "sensor" in route else fleet.FLEET_MAX_READS


def sensor_params(route: str, device_id: str = HOSTILE, tag: str = TAG) -> dict[str, str]:
    return {"device_id": device_id, "tag": tag} if "sensor" in route else {}


# --- named cases ---


@pytest.mark.parametrize("route", ROUTES)
def test_an_absurd_range_is_refused_at_once_before_any_read(client, store, route):
    answer = ask(client, store, route, {**ABSURD, **sensor_params(route)})
    assert answer.status_code == 400 and "at most" in rule_of(answer)
    assert "narrow the range" in rule_of(answer) and store[0].reads == 0


def test_the_range_check_does_arithmetic_not_a_list_of_hours():
    """Refusing 87 million hours allocates next to nothing (it once listed every hour before checking)."""
    tracemalloc.start()
    try:
        with pytest.raises(fleet.RangeError, match=r"87649\d{3} hours asked, at most 168"):
            fleet.request_range(ABSURD["start"], ABSURD["end"], fleet.MAX_FLEET_HOURS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("params", "rule"),
    [
        pytest.param({"start": "yesterday"}, "start 'yesterday' is not a valid time", id="word"),
        pytest.param({"start": "2026-02-30T00:00Z"}, "day is out of range", id="february-30"),
        pytest.param({"end": "2026-02-30"}, "end '2026-02-30' is not a valid time", id="end-february-30"),
        pytest.param({"start": "2026-11-24T05:30Z"}, "not on a whole UTC hour", id="half-hour"),
        pytest.param({"start": "x" * 100}, "100 characters long", id="long"),
        pytest.param({"start": "0001-01-01T00:00+05:00"}, "not a valid time", id="before-year-1-in-utc"),
        pytest.param({"end": "0001-01-01T00:00Z"}, "leaves the calendar", id="default-start-before-year-1"),
        pytest.param({"start": "2026-11-25T03:00Z", "end": "2026-11-25T01:00Z"}, "not after", id="reversed"),
    ],
)
def test_times_that_are_not_whole_utc_hours_answer_400_with_the_rule(client, store, route, params, rule):
    answer = ask(client, store, route, {**params, **sensor_params(route)})
    assert answer.status_code == 400, answer.text
    detail = rule_of(answer)
    assert rule in detail and store[0].reads == 0
    if "leaves" not in detail and "not after" not in detail:
        assert "ISO 8601 time on a whole UTC hour, like 2026-11-24T05:00Z" in detail


def test_offsets_are_converted_to_utc_and_labelled_in_utc(client, store):
    """``01:00+01:00`` is 00:00 UTC: the answer holds that UTC hour and says so; an offset that puts a bound off
    the UTC hour (+05:30) is refused naming the UTC time it meant."""
    plain = ask(client, store, "/api/fleet", {"start": FIRST.isoformat(), "end": END.isoformat()}).json()
    shifted = ask(client, store, "/api/fleet", {"start": "2026-11-24T04:00+01:00", "end": "2026-11-24T07:00+02:00"})
    assert shifted.status_code == 200
    assert shifted.json()["hours"] == plain["hours"] == ["2026-11-24T03:00:00+00:00", "2026-11-24T04:00:00+00:00"]
    assert shifted.json()["heatmap"] == plain["heatmap"] and plain["totals"]["windows"] == 239
    page = ask(client, store, "/fleet", {"start": "2026-11-24T04:00+01:00", "end": "2026-11-24T07:00+02:00"}).text
    assert "2026-11-24 03:00 to 2026-11-24 05:00 UTC" in page and "+01:00" not in page
    india = ask(client, store, "/api/fleet", {"start": "2026-11-24T09:00+05:30", "end": "2026-11-24T10:00+05:30"})
    assert india.status_code == 400 and "(2026-11-24T03:30Z in UTC) is not on a whole UTC hour" in rule_of(india)


@pytest.mark.parametrize(
    ("route", "params", "status", "rule"),
    [
        pytest.param("/api/sensor", {"device_id": "d" * 257, "tag": TAG}, 400, "1 to 256 characters", id="long-id"),
        pytest.param("/sensor", {"device_id": "dev\n-0000", "tag": TAG}, 400, "control character", id="newline"),
        pytest.param("/api/sensor", {"device_id": "dev-0000", "tag": ""}, 400, "tag must be 1 to 256", id="empty"),
        pytest.param("/api/sensor", {"tag": TAG}, 422, "Field required", id="no-device"),
        pytest.param("/api/fleet", {"page": "-1"}, 422, "greater than or equal to 0", id="page-negative"),
        pytest.param("/fleet", {"page": "100001"}, 422, "less than or equal to 100000", id="page-huge"),
        pytest.param("/api/fleet", {"page": "2 OR 1=1"}, 422, "valid integer", id="page-text"),
    ],
)
def test_names_and_pages_out_of_bounds_answer_4xx_with_the_rule(client, store, route, params, status, rule):
    answer = ask(client, store, route, params)
    assert answer.status_code == status and rule in rule_of(answer) and store[0].reads == 0


def test_the_page_bound_is_the_packages():
    assert "le=100_000" in Path(views.__file__).read_text() and fleet.MAX_DEVICE_PAGE == 100_000


def test_names_are_filters_never_paths_and_shown_escaped(client, store):
    """The hostile device is shown, as text; a path-like name matches nothing and reads no other blob."""
    window = {"start": FIRST.isoformat(), "end": END.isoformat()}
    data = ask(client, store, "/api/sensor", {**window, "device_id": HOSTILE, "tag": TAG}).json()
    assert data["device_id"] == HOSTILE and len(data["windows"]) == 119 and len(data["quarantined"]) == 1
    assert list(data["models"]) == ["v1"] and int(data["models"]["v1"]["train_rows"]) > 0
    page = ask(client, store, "/sensor", {**window, "device_id": HOSTILE, "tag": TAG}).text
    assert HOSTILE not in page and "&lt;!channel&gt; &lt;https://evil.example/login|Open the runbook&gt;" in page
    fleet_page = ask(client, store, "/fleet", window).text
    assert "<!channel>" not in fleet_page and "data-device='&lt;!channel&gt;" in fleet_page
    escape = ask(client, store, "/api/sensor", {**window, "device_id": "../../models/versions/v1", "tag": TAG})
    assert escape.status_code == 200 and escape.json()["windows"] == [] and store[0].calls["list"] == 0


@pytest.mark.parametrize("route", ROUTES)
def test_the_longest_range_reads_at_most_the_documented_cap(client, store, route):
    limit = fleet.MAX_SENSOR_HOURS if "sensor" in route else fleet.MAX_FLEET_HOURS
    params = {"start": (END - limit * H).isoformat(), "end": END.isoformat(), **sensor_params(route)}
    answer = ask(client, store, route, params)
    assert answer.status_code == 200 and 0 < store[0].reads <= cap_of(route) and store[0].calls["list"] == 0
    # the sensor routes open each hour's partitions for ranged reads; these are smaller than the tail: one read each
    assert store[0].calls["stat"] == (3 * limit if "sensor" in route else 0)
    assert 0 < store[0].calls["read_range"] <= store[0].calls["stat"] or "sensor" not in route
    too_long = {**params, "start": (END - (limit + 1) * H).isoformat()}
    assert ask(client, store, route, too_long).status_code == 400 and store[0].reads == 0


@pytest.mark.airflow
def test_the_api_server_refuses_them_behind_its_login(store, airflow_db, monkeypatch):
    """The same refusals through the Airflow API server's own app (the plugin mounted, a real JWT)."""
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    monkeypatch.setattr(views, "_sources", lambda: store)
    api = TestClient(create_app(), raise_server_exceptions=False)
    assert api.get("/scoring/api/fleet", params=ABSURD).status_code == 401  # no login: not even the rule
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    auth = {"Authorization": f"Bearer {token}"}
    for route in ROUTES:
        store[0].calls.clear()
        absurd = api.get(f"/scoring{route}", params={**ABSURD, **sensor_params(route)}, headers=auth)
        bad_day = api.get(f"/scoring{route}", params={"start": "2026-02-30", **sensor_params(route)}, headers=auth)
        assert absurd.status_code == bad_day.status_code == 400 and store[0].reads == 0
        assert "at most" in rule_of(absurd) and "day is out of range" in rule_of(bad_day)


# --- the report command ---


@pytest.fixture
def report_env(store, monkeypatch, tmp_path):
    monkeypatch.setenv(config.STORAGE_ENV, str(store[0].root))
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--start", "yesterday"], "report: --start 'yesterday' is not a valid time", id="bad-date"),
        pytest.param(["--end", "2026-02-30"], "report: --end '2026-02-30' is not a valid time", id="february-30"),
        pytest.param(["--end", ABSURD["end"]], "hours asked, at most 168", id="absurd-range"),
        pytest.param(["--sensors", "-1"], "--sensors must be 0 to 20", id="sensors"),
        pytest.param(["--out", "{tmp}/missing/report.html"], "/missing) does not exist", id="missing-folder"),
        pytest.param(["--out", "{tmp}"], "is a folder", id="out-is-a-folder"),
    ],
)
def test_report_refuses_bad_arguments_in_one_line(report_env, args, message, capsys):
    values = {"--start": FIRST.isoformat(), "--end": END.isoformat(), "--out": "{tmp}/report.html"}
    values.update(zip(args[::2], args[1::2]))
    argv = ["report"] + [part.format(tmp=report_env) for pair in values.items() for part in pair]
    with pytest.raises(SystemExit) as stop:
        cli(argv)
    assert message in str(stop.value.code) and "\n" not in str(stop.value.code)
    assert not (report_env / "report.html").exists()


def test_report_command_exits_1_with_one_line_and_no_traceback(report_env):
    """As an operator runs it: the process's stderr is the one line, its exit status 1."""
    done = subprocess.run(
        [sys.executable, "-m", "sensor_scoring", "report", "--start", "2026-02-30", "--end", END.isoformat()]
        + ["--out", str(report_env / "nowhere" / "r.html")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**_plain_env(), config.STORAGE_ENV: str(report_env)},
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "report: --start '2026-02-30' is not a valid time (day is out of range for month): --start must be an "
        "ISO 8601 time on a whole UTC hour, like 2026-11-24T05:00Z (no offset means UTC)"
    ]


def _plain_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SCORING_")}


def test_report_converts_offsets_and_writes_the_page(report_env, capsys):
    out = report_env / "report.html"
    assert cli(["report", "--start", "2026-11-24T04:00+01:00", "--end", END.isoformat(), "--out", str(out)]) == 0
    facts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert facts["hours"] == 2 and facts["hours_without_health"] == 0 and HOSTILE not in out.read_text()


# --- the fuzz test: hostile query parameters against the real app over the real store ---

OFFSETS = [timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=5, minutes=30)), timezone(-H * 11)]


@st.composite
def times(draw: st.DrawFn) -> str | None:
    """A time as people and scripts write them: ISO with any offset and precision, far past and future, near the
    scored hours, and words, impossible dates and arbitrary text."""
    moment = draw(
        st.one_of(
            st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)),
            st.integers(-30, 200).map(lambda n: (FIRST + n * H).replace(tzinfo=None)),
        )
    )
    zone = draw(st.sampled_from(OFFSETS))
    written = draw(st.sampled_from(["isoformat", "hour", "minutes", "z", "naive", "date"]))
    text = {
        "isoformat": lambda: moment.replace(tzinfo=zone).isoformat(),
        "hour": lambda: moment.replace(tzinfo=zone).strftime("%Y-%m-%dT%H:00%z"),
        "minutes": lambda: moment.strftime("%Y-%m-%dT%H:%M") + "Z",
        "z": lambda: moment.strftime("%Y-%m-%dT%H:00Z"),
        "naive": lambda: moment.strftime("%Y-%m-%d %H:00"),
        "date": lambda: moment.strftime("%Y-%m-%d"),
    }[written]()
    return draw(
        st.one_of(
            st.just(text),
            st.none(),
            st.sampled_from(["yesterday", "2026-02-30", "now", "", "0001-01-01T00:00Z", "9999-12-31T00:00Z"]),
            st.text(max_size=80),
        )
    )


NAMES = st.one_of(
    st.sampled_from([HOSTILE, "dev-0000", TAG, "../../etc/passwd", "<script>alert(1)</script>", "%00", "a" * 300]),
    st.text(max_size=300),
)
PAGES = st.one_of(st.none(), st.integers(-(10**30), 10**30).map(str), st.text(max_size=20))


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), start=times(), end=times(), page=PAGES, device_id=NAMES, tag=NAMES)
def test_fuzzed_requests_answer_2xx_or_4xx_within_the_read_cap(client, store, route, start, end, page, device_id, tag):
    params = {"start": start, "end": end, "page": page}
    if "sensor" in route:
        params.update(device_id=device_id, tag=tag)
    answer = ask(client, store, route, {k: v for k, v in params.items() if v is not None})
    assert 200 <= answer.status_code < 500, (answer.status_code, answer.text[:500])
    assert store[0].reads <= cap_of(route) and store[0].calls["list"] == 0
    if answer.status_code >= 400:
        assert store[0].reads == 0 and rule_of(answer)  # refused before any read, with the rule
    elif route.startswith("/api/"):
        assert all(hour.endswith("+00:00") for hour in answer.json()["hours"])
    if not route.startswith("/api/"):  # a page or its refusal: names and rules shown as text, never as markup
        text = answer.text
        assert text.startswith("<!doctype html>") and "<script" not in text and "<!channel>" not in text
        assert answer.headers["content-type"].startswith("text/html")
