"""The fleet and sensor pages inside the Airflow UI: a FastAPI app the plugin mounts on the API server.

Why a FastAPI app with an external view rather than a React app: Airflow 3.3's ``fastapi_apps`` mounts any ASGI
app under a prefix of the API server, and ``external_views`` with a ``url_route`` adds a navigation entry that shows
the page inside the UI's frame. Pages rendered on the server (HTML with inline SVG, ``sensor_scoring.report``) need
no npm build and are the very markup of the standalone report. A React app plugin would need a JavaScript bundle
built and shipped with the wheel for the same charts.

Authentication: a plugin's app is mounted as is (``airflow.api_fastapi.app.init_plugins``: ``app.mount``), with
none of the core API's dependencies, so it is open unless it asks. Every route here depends on
``airflow.api_fastapi.core_api.security.get_user``: the same check as the core API (a ``Bearer`` token, else the
UI's ``_token`` cookie, refreshed by the root app's ``JWTRefreshMiddleware``, which wraps mounted apps too). Without
a login the JSON routes answer 401 and the pages redirect to the auth manager's login URL.

Limits: every parameter is checked (``sensor_scoring.fleet.request_range``, ``check_page``, ``check_name``) before
storage is opened, so a refused request reads nothing and answers 400 with the rule (422 for FastAPI's own type
checks); times are whole UTC hours (offsets converted), and a request reads at most ``fleet.FLEET_MAX_READS`` or
``fleet.SENSOR_MAX_READS`` blobs (docs/operating.md).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

log = logging.getLogger(__name__)
#: Where the plugin mounts the app on the API server.
URL_PREFIX = "/scoring"
DAG_ID = "sensor_scoring"


async def _user(request: Request) -> Any:
    """Airflow's own login check (``get_user``), as the core API applies it."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, oauth2_scheme

    return await get_user(request, await oauth2_scheme(request), await bearer_scheme(request))


User = Annotated[Any, Depends(_user)]
#: The heatmap's page of devices (``fleet.DEVICES_PER_PAGE`` a page), 0 to ``fleet.MAX_DEVICE_PAGE`` (repeated
#: here: ``fleet`` is imported when a page is asked for, not when the API server loads the plugin); else 422.
Page = Annotated[int, Query(ge=0, le=100_000)]


def _sources() -> tuple[Any, Any]:
    """Storage (the scoring_storage connection, else SCORING_STORAGE) and the container names."""
    from sensor_scoring import settings as config
    from sensor_scoring_airflow.connections import open_storage

    return open_storage(), config.Containers.from_env()


def _fleet(start: str | None, end: str | None, page: int):
    """Every parameter is checked (``fleet.request_range``, ``check_page``) before storage is even opened."""
    from sensor_scoring.fleet import MAX_FLEET_HOURS, check_page, fleet_view, request_range

    hours = request_range(start, end, MAX_FLEET_HOURS)
    check_page(page)
    storage, containers = _sources()
    return fleet_view(storage, containers, hours[0], hours[-1] + timedelta(hours=1), device_page=page)


def _sensor(device_id: str, tag: str, start: str | None, end: str | None):
    from sensor_scoring.fleet import MAX_SENSOR_HOURS, check_name, request_range, sensor_view

    hours = request_range(start, end, MAX_SENSOR_HOURS)
    check_name(device_id, "device_id")
    check_name(tag, "tag")
    storage, containers = _sources()
    return sensor_view(storage, containers, device_id, tag, hours[0], hours[-1] + timedelta(hours=1))


def create_app() -> FastAPI:
    """The app ``ScoringPlugin`` registers (``fastapi_apps``)."""
    from sensor_scoring.fleet import RangeError

    app = FastAPI(title="Sensor scoring views", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RangeError)
    async def bad_range(request: Request, exc: RangeError) -> Response:
        """A parameter refused before any read: 400 with the rule it broke (FastAPI's own type checks answer 422)."""
        return _refused(request, str(exc), 400)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        """FastAPI's own checks (a page that is no whole number, a missing device_id): 422, FastAPI's JSON for the
        JSON routes, the same rules as a page for the pages."""
        if "/api/" in request.url.path:
            return await request_validation_exception_handler(request, exc)
        rules = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return _refused(request, rules, 422)

    @app.exception_handler(HTTPException)
    async def login_first(request: Request, exc: HTTPException) -> Response:
        """A page asked for without a login goes to the login page (and back); the JSON routes answer 401."""
        if exc.status_code in (401, 403) and "/api/" not in request.url.path:
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.get("/api/fleet")
    def fleet_data(user: User, start: str | None = None, end: str | None = None, page: Page = 0) -> dict:
        view = _fleet(start, end, page)
        return {
            "hours": [h.isoformat() for h in view.hours],
            "missing_hours": [h.isoformat() for h in view.missing_hours],
            "totals": view.totals,
            "devices_total": view.devices_total,
            "device_page": view.device_page,
            "heatmap": {
                device: {pd_iso(h): int(n) for h, n in view.heatmap[device].items()} for device in view.heatmap.columns
            },
            "drifting": view.drifting.to_dict(orient="records"),
            "quarantine_reasons": {
                pd_iso(h): {k: int(v) for k, v in row.items() if v} for h, row in view.quarantine_reasons.iterrows()
            },
            "runs": {h.isoformat(): run for h, run in view.runs.items()},
        }

    @app.get("/api/sensor")
    def sensor_data(user: User, device_id: str, tag: str, start: str | None = None, end: str | None = None) -> dict:
        view = _sensor(device_id, tag, start, end)
        windows = view.windows.assign(window_end=view.windows["window_end"].map(pd_iso))
        quarantined = view.quarantined.assign(window_end=view.quarantined["window_end"].map(pd_iso))
        return {
            "device_id": view.device_id,
            "tag": view.tag,
            "hours": [h.isoformat() for h in view.hours],
            "threshold": view.threshold,
            "truncated": view.truncated,
            "windows": windows.to_dict(orient="records"),
            "quarantined": quarantined.to_dict(orient="records"),
            "models": {k: {n: str(v) for n, v in info.items()} for k, info in view.models.items()},
        }

    @app.get("/fleet", response_class=HTMLResponse)
    def fleet_page(user: User, start: str | None = None, end: str | None = None, page: Page = 0) -> str:
        from sensor_scoring import report

        view = _fleet(start, end, page)
        first, stop = view.hours[0], view.hours[-1] + timedelta(hours=1)

        def sensor_link(device_id: str, tag: str) -> str:
            last = max(first, stop - timedelta(hours=24))
            return f"sensor?{report.query(device_id=device_id, tag=tag, start=last, end=stop)}"

        def run_link(hour: datetime, run_id: str) -> str:
            return f"../dags/{DAG_ID}/runs/{quote(run_id, safe='')}"

        def page_link(number: int) -> str:
            return f"fleet?{report.query(start=first, end=stop, page=number)}"

        return report.page("Sensor fleet", report.fleet_body(view, sensor_link, run_link, page_link))

    @app.get("/sensor", response_class=HTMLResponse)
    def sensor_page(user: User, device_id: str, tag: str, start: str | None = None, end: str | None = None) -> str:
        from sensor_scoring import report

        view = _sensor(device_id, tag, start, end)
        return report.page(f"Sensor {view.device_id} / {view.tag}", report.sensor_body(view))

    return app


def _refused(request: Request, rule: str, status: int) -> Response:
    """A refused request: ``{"detail": rule}`` for the JSON routes, a short HTML page saying it for the pages."""
    if "/api/" in request.url.path:
        return JSONResponse({"detail": rule}, status_code=status)
    from sensor_scoring import report

    return HTMLResponse(
        report.page("Request refused", f"<p class='refused'>{report.esc(rule)}</p>"), status_code=status
    )


def pd_iso(moment: Any) -> str:
    import pandas as pd

    return pd.Timestamp(moment).isoformat()
