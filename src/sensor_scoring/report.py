"""HTML with inline SVG charts for the fleet and sensor views: the Airflow UI pages and the standalone report.

Server-rendered, no JavaScript and no external resource, so the same markup is a page inside Airflow and a
self-contained file someone can mail (``python -m sensor_scoring report``). Every text is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import quote, urlencode

import pandas as pd

from sensor_scoring.fleet import DEVICES_PER_PAGE, FleetView, SensorView

CSS = """
body{font-family:system-ui,sans-serif;margin:1rem 2rem;color:#222}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;font-size:.85rem} td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
.muted{color:#777} svg{background:#fafafa;border:1px solid #ddd}
"""
#: Links: (device_id, tag) -> the sensor page; hour -> its run in Airflow (None: no links, as in a file).
SensorLink = Callable[[str, str], str] | None
RunLink = Callable[[datetime, str], str] | None


def esc(value: object) -> str:
    return html.escape(str(value))


def page(title: str, body: str) -> str:
    """A whole HTML document (inline CSS, nothing fetched)."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>"
    )


def _color(value: int, top: int) -> str:
    if value <= 0:
        return "#eef5ee"
    share = min(1.0, value / max(top, 1))
    return f"rgb(255,{int(220 - 200 * share)},{int(200 - 190 * share)})"


def heatmap_svg(heatmap: pd.DataFrame, sensor_link: SensorLink = None) -> str:
    """Hours (rows) x devices (columns) of anomaly counts; each cell carries ``data-hour``/``data-device`` and its
    count (title and ``data-anomalies``) so people and tests can read it."""
    cell, left, topm = 16, 130, 90
    hours, devices = list(heatmap.index), list(heatmap.columns)
    width, height = left + cell * max(len(devices), 1) + 60, topm + cell * max(len(hours), 1) + 10
    peak = int(heatmap.to_numpy().max()) if heatmap.size else 0
    parts = [f"<svg class='heatmap' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>"]
    for j, device in enumerate(devices):
        x = left + j * cell + cell / 2
        parts.append(
            f"<text x='{x}' y='{topm - 4}' font-size='10' transform='rotate(-60 {x} {topm - 4})'>{esc(device)}</text>"
        )
    for i, hour in enumerate(hours):
        y = topm + i * cell
        parts.append(f"<text x='4' y='{y + 12}' font-size='10'>{pd.Timestamp(hour):%Y-%m-%d %H:00}</text>")
        for j, device in enumerate(devices):
            n = int(heatmap.iat[i, j])
            parts.append(
                f"<rect class='cell' x='{left + j * cell}' y='{y}' width='{cell - 1}' height='{cell - 1}' "
                f"fill='{_color(n, peak)}' data-hour='{pd.Timestamp(hour).isoformat()}' data-device='{esc(device)}' "
                f"data-anomalies='{n}'><title>{esc(device)} {pd.Timestamp(hour):%Y-%m-%d %H:00}: {n} anomalies"
                "</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def stacked_bars_svg(counts: pd.DataFrame) -> str:
    """Quarantined rows per hour (bars) split by reason (colours, with a legend)."""
    palette = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    bar, left, height = 14, 40, 160
    width = left + bar * max(len(counts), 1) + 220
    peak = max(int(counts.sum(axis=1).max()) if len(counts) and counts.size else 0, 1)
    parts = [f"<svg class='quarantine' width='{width}' height='{height + 30}' xmlns='http://www.w3.org/2000/svg'>"]
    parts.append(f"<text x='2' y='12' font-size='10'>{peak}</text><text x='2' y='{height}' font-size='10'>0</text>")
    for i, (hour, row) in enumerate(counts.iterrows()):
        base = float(height)
        for k, reason in enumerate(counts.columns):
            n = int(row[reason])
            if n <= 0:
                continue
            h = (height - 10) * n / peak
            base -= h
            parts.append(
                f"<rect x='{left + i * bar}' y='{base:.1f}' width='{bar - 2}' height='{h:.1f}' "
                f"fill='{palette[k % len(palette)]}'><title>{pd.Timestamp(hour):%Y-%m-%d %H:00} {esc(reason)}: {n}"
                "</title></rect>"
            )
    for k, reason in enumerate(counts.columns):
        x, y = left + bar * max(len(counts), 1) + 10, 20 + 14 * k
        parts.append(
            f"<rect x='{x}' y='{y - 9}' width='10' height='10' fill='{palette[k % len(palette)]}'/>"
            f"<text x='{x + 14}' y='{y}' font-size='11'>{esc(reason)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def score_svg(view: SensorView) -> str:
    """Decision value over time as a line, the threshold as a dashed line, anomalies as red dots (``circle``
    elements of class ``anomaly`` with their ``data-window-end``)."""
    w, h, pad = 900, 260, 40
    frame = view.windows
    parts = [f"<svg class='scores' width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>"]
    if frame.empty:
        parts.append(f"<text x='{pad}' y='{h / 2}'>no scored windows in this range</text></svg>")
        return "".join(parts)
    t = pd.to_datetime(frame["window_end"], utc=True)
    t0, t1 = t.min(), t.max()
    span = max((t1 - t0).total_seconds(), 1.0)
    lo = min(float(frame["score"].min()), view.threshold)
    hi = max(float(frame["score"].max()), view.threshold)
    rng = (hi - lo) or 1.0

    def x(moment: pd.Timestamp) -> float:
        return pad + (w - 2 * pad) * (moment - t0).total_seconds() / span

    def y(value: float) -> float:
        return h - pad - (h - 2 * pad) * (value - lo) / rng

    points = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in zip(t, frame["score"]))
    parts.append(f"<polyline fill='none' stroke='#1f77b4' stroke-width='1' points='{points}'/>")
    ty = y(view.threshold)
    parts.append(
        f"<line class='threshold' x1='{pad}' x2='{w - pad}' y1='{ty:.1f}' y2='{ty:.1f}' stroke='#d62728' "
        f"stroke-dasharray='4 3'/><text x='{w - pad - 90}' y='{ty - 4:.1f}' font-size='10'>threshold "
        f"{view.threshold:g}</text>"
    )
    for m, v, flag in zip(t, frame["score"], frame["is_anomaly"]):
        if flag:
            parts.append(
                f"<circle class='anomaly' cx='{x(m):.1f}' cy='{y(float(v)):.1f}' r='3' fill='#d62728' "
                f"data-window-end='{m.isoformat()}'><title>{m:%Y-%m-%d %H:%M} score {float(v):.4f}</title></circle>"
            )
    parts.append(
        f"<text x='{pad}' y='{h - 8}' font-size='10'>{t0:%Y-%m-%d %H:%M}</text>"
        f"<text x='{w - pad - 90}' y='{h - 8}' font-size='10'>{t1:%Y-%m-%d %H:%M}</text>"
        f"<text x='2' y='{pad}' font-size='10'>{hi:.3g}</text><text x='2' y='{h - pad}' font-size='10'>{lo:.3g}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def table(frame: pd.DataFrame, cls: str, link: Callable[[pd.Series], str] | None = None) -> str:
    if frame.empty:
        return f"<p class='muted {cls}'>none</p>"
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = "".join(f"<td>{esc(_fmt(v))}</td>" for v in row)
        if link is not None:
            cells = cells.replace("<td>", f"<td><a href='{esc(link(row))}'>", 1).replace("</td>", "</a></td>", 1)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table class='{cls}'><tr>{head}</tr>{''.join(rows)}</table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def fleet_body(view: FleetView, sensor_link: SensorLink = None, run_link: RunLink = None, page_link=None) -> str:
    """The fleet section: totals, the heatmap (one page of devices), drifting sensors, quarantine reasons, runs."""
    first, end = view.hours[0], view.hours[-1] + timedelta(hours=1)
    t = view.totals
    out = [
        f"<p>{len(view.hours)} hour(s), {first:%Y-%m-%d %H:00} to {end:%Y-%m-%d %H:00} UTC: {t.get('windows', 0)} "
        "windows scored, "
        f"<b class='anomalies-total'>{t.get('anomalies', 0)}</b> anomalies, {t.get('quarantined', 0)} quarantined, "
        f"{view.devices_total} devices.</p>"
    ]
    if view.missing_hours:
        out.append(
            f"<p class='muted'>No health for {len(view.missing_hours)} hour(s) (not committed yet, or committed "
            "before model health existed).</p>"
        )
    shown = len(view.heatmap.columns)
    out.append(f"<h2>Anomalies per hour and device (devices {view.device_page * DEVICES_PER_PAGE + 1 if shown else 0}-")
    out.append(f"{view.device_page * DEVICES_PER_PAGE + shown} of {view.devices_total}, most anomalous first)</h2>")
    if page_link is not None and (view.device_page + 1) * DEVICES_PER_PAGE < view.devices_total:
        out.append(f"<p><a class='next-page' href='{esc(page_link(view.device_page + 1))}'>next devices</a></p>")
    out.append(heatmap_svg(view.heatmap, sensor_link))
    out.append("<h2>Most drifting sensors</h2>")
    link = (lambda row: sensor_link(row["device_id"], row["tag"])) if sensor_link else None
    out.append(table(view.drifting, "drifting", link))
    out.append("<h2>Quarantined rows per hour, by reason</h2>")
    out.append(
        stacked_bars_svg(view.quarantine_reasons) if view.quarantine_reasons.size else "<p class='muted'>none</p>"
    )
    out.append("<h2>Runs</h2><ul class='runs'>")
    for h, run_id in sorted(view.runs.items()):
        label = f"{h:%Y-%m-%d %H:00} {esc(run_id)}"
        out.append(f"<li><a href='{esc(run_link(h, run_id))}'>{label}</a></li>" if run_link else f"<li>{label}</li>")
    out.append("</ul>")
    return "".join(out)


def sensor_body(view: SensorView) -> str:
    """The sensor section: model versions and training ranges, the score chart, health per hour, quarantine."""
    anomalies = int(view.windows["is_anomaly"].sum()) if len(view.windows) else 0
    out = [
        f"<p>{len(view.windows)} windows scored, <b class='anomaly-count'>{anomalies}</b> anomalies, "
        f"{len(view.quarantined)} quarantined, {view.hours[0]:%Y-%m-%d %H:00} to "
        f"{view.hours[-1] + timedelta(hours=1):%Y-%m-%d %H:00} UTC"
        f"{' (latest windows only)' if view.truncated else ''}.</p>",
        "<h2>Model</h2><ul class='models'>",
    ]
    for version, info in view.models.items():
        trained = (
            f"trained on {esc(info['train_start'])} .. {esc(info['train_end'])} ({esc(info.get('train_rows'))} windows,"
            f" flagged share {float(info.get('train_flagged_share', 0.0)):.3f})"  # type: ignore[arg-type]
            if info
            else "training range unknown"
        )
        out.append(f"<li>{esc(version)}: {trained}</li>")
    out.append("</ul><h2>Score and threshold</h2>")
    out.append(score_svg(view))
    out.append("<h2>Health per hour</h2>")
    out.append(table(view.health, "health"))
    out.append("<h2>Quarantined windows</h2>")
    out.append(table(view.quarantined, "quarantined"))
    return "".join(out)


def query(**params: object) -> str:
    return urlencode({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in params.items()})


def quoted(text: str) -> str:
    return quote(text, safe="")


def report_html(fleet: FleetView, sensors: list[SensorView]) -> str:
    """The standalone report: the fleet section, then a section per sensor given (the most drifting)."""
    body = [fleet_body(fleet)]
    for view in sensors:
        body.append(
            f"<h1 id='{esc(view.device_id)}-{esc(view.tag)}'>Sensor {esc(view.device_id)} / {esc(view.tag)}</h1>"
        )
        body.append(sensor_body(view))
    return page("Sensor scoring report", "".join(body))


def build_report(storage, containers, start: datetime, end: datetime, *, sensors: int = 3) -> tuple[str, dict]:
    """The report's HTML over [start, end) and what it holds: the fleet, and the ``sensors`` most drifting sensors
    over the last ``fleet.MAX_SENSOR_HOURS`` hours of the range (the sensor view reads whole partitions)."""
    from sensor_scoring.fleet import MAX_SENSOR_HOURS, RangeError, check_name, fleet_view, sensor_view

    fleet = fleet_view(storage, containers, start, end)
    recent = max(start, end - timedelta(hours=MAX_SENSOR_HOURS))
    views, skipped = [], []
    for row in fleet.drifting.head(sensors).itertuples():
        device_id, tag = str(row.device_id), str(row.tag)
        try:  # a landed name the sensor pages refuse (over 256 characters, a control character) gets no section
            check_name(device_id, "device_id")
            check_name(tag, "tag")
        except RangeError:
            skipped.append(f"{device_id!r}/{tag!r}")
            continue
        views.append(sensor_view(storage, containers, device_id, tag, recent, end))
    facts = {
        "hours": len(fleet.hours),
        "hours_without_health": len(fleet.missing_hours),
        "devices": fleet.devices_total,
        "anomalies": fleet.totals.get("anomalies", 0),
        "sensors": [f"{v.device_id}/{v.tag}" for v in views],
        **({"sensors_without_section": skipped} if skipped else {}),
    }
    return report_html(fleet, views), facts
