"""How good a model version is on windows it never trained on: flagged share, and precision/recall/F1 where labelled.

Labels live in the ``labels`` container, one Parquet file per hour at ``YYYY/MM/DD/HH/labels.parquet`` (the
simulator's layout, and the one an operator uploads to): columns ``device_id``, ``tag``, ``window_end`` (UTC, the
window's end, ending in that hour) and ``anomaly`` (its kind, free text). A file marks its hour as labelled: every
window of that hour not listed is normal, so an hour without anomalies is labelled by an empty file. Hours without a
file are unlabelled: only their flagged share is measured.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from sensor_scoring.layout import HOUR
from sensor_scoring.scorer import ModelArrays
from sensor_scoring.storage import Storage, parquet_frame

KEY = ["device_id", "tag"]
LABEL_COLUMNS = ("device_id", "tag", "window_end", "anomaly")


def label_path(hour: datetime) -> str:
    """Where the labels of ``hour`` are (simulator and operator uploads alike)."""
    return hour.strftime("%Y/%m/%d/%H/labels.parquet")


def read_labels(storage: Storage, container: str, start: datetime, end: datetime) -> tuple[pd.DataFrame, list[str]]:
    """The anomalous windows of the labelled hours in [start, end), and those hours (ISO text).

    A label file without the columns above is an error naming the file: a mislabelled upload would otherwise
    make every window look normal.
    """
    frames, hours, moment = [], [], start
    while moment < end:
        path = label_path(moment)
        try:
            data = storage.read_bytes(container, path)
        except FileNotFoundError:
            moment += HOUR
            continue
        frame = parquet_frame(data)
        missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"label file {container}/{path} lacks column(s) {missing}; expected {list(LABEL_COLUMNS)}")
        frames.append(frame[list(LABEL_COLUMNS)])
        hours.append(moment.isoformat())
        moment += HOUR
    labels = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(LABEL_COLUMNS))
    labels["window_end"] = pd.to_datetime(labels["window_end"], utc=True)
    return labels.drop_duplicates(["device_id", "tag", "window_end"]), hours


def flag(windows: pd.DataFrame, models: dict[tuple[str, str], ModelArrays]) -> pd.DataFrame:
    """The windows of sensors that have a model, with ``is_anomaly`` as the hourly scorer would set it."""
    from sensor_scoring.scorer import score

    if windows.empty or not models:
        return windows.iloc[:0].assign(score=pd.Series(dtype=float), is_anomaly=pd.Series(dtype=bool))
    covered = pd.MultiIndex.from_frame(windows[KEY]).isin(list(models))
    return score(windows.loc[covered].reset_index(drop=True), models)


def truth_of(flagged: pd.DataFrame, labels: pd.DataFrame, labelled_hours: list[str]) -> pd.DataFrame:
    """Adds ``labelled`` (the window's hour has a label file) and ``truth`` (the window is listed as anomalous)."""
    hours = flagged["window_end"].dt.floor("h").map(lambda h: h.isoformat())
    listed = flagged.merge(
        labels[["device_id", "tag", "window_end"]].assign(_hit=True), how="left", on=[*KEY, "window_end"]
    )
    return flagged.assign(labelled=hours.isin(set(labelled_hours)).to_numpy(), truth=listed["_hit"].eq(True).to_numpy())


def metrics(frame: pd.DataFrame) -> dict[str, float | int | None]:
    """Counts and shares of one group of judged windows (``is_anomaly``, ``labelled``, ``truth``).

    Precision, recall and F1 are over the labelled windows only, ``None`` when none is labelled; a ratio with a zero
    denominator is 0 (nothing flagged: precision 0, so a model that flags nothing never looks perfect).
    ``normal_flagged_share``: the share of labelled normal windows flagged, the false-alarm rate measured.
    """
    n = len(frame)
    flagged = int(frame["is_anomaly"].sum()) if n else 0
    out: dict[str, float | int | None] = {
        "windows": n,
        "flagged": flagged,
        "flagged_share": round(flagged / n, 6) if n else 0.0,
        "labelled": 0,
        "anomalous": 0,
        "precision": None,
        "recall": None,
        "f1": None,
        "normal_flagged_share": None,
    }
    lab = frame.loc[frame["labelled"]] if n else frame
    if len(lab):
        tp = int((lab["is_anomaly"] & lab["truth"]).sum())
        fp = int((lab["is_anomaly"] & ~lab["truth"]).sum())
        fn = int((~lab["is_anomaly"] & lab["truth"]).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.update(
            labelled=len(lab),
            anomalous=int(lab["truth"].sum()),
            precision=round(precision, 6),
            recall=round(recall, 6),
            f1=round(f1, 6),
            normal_flagged_share=round(fp / normal, 6) if (normal := len(lab) - tp - fn) else None,
        )
    return out


def per_sensor(judged: pd.DataFrame, model: str) -> pd.DataFrame:
    """One row of ``metrics`` per sensor, tagged with which model (candidate or production) it describes."""
    rows = [{"device_id": d, "tag": t, "model": model, **metrics(g)} for (d, t), g in judged.groupby(KEY, sort=True)]
    columns = ["device_id", "tag", "model", *metrics(judged.iloc[:0]).keys()]
    return pd.DataFrame(rows, columns=columns)


def compare(
    windows: pd.DataFrame,
    candidate: dict[tuple[str, str], ModelArrays],
    production: dict[tuple[str, str], ModelArrays] | None,
    labels: pd.DataFrame,
    labelled_hours: list[str],
) -> tuple[dict[str, object], pd.DataFrame]:
    """Judge the candidate and production on the same held-back windows.

    Fleet metrics of each are over the windows of the sensors both cover (``compared``), so neither wins by
    coverage; the candidate's own coverage is reported too (``candidate_all``). Returns the fleet summary and the
    per-sensor table.
    """
    cand = truth_of(flag(windows, candidate), labels, labelled_hours)
    tables = [per_sensor(cand, "candidate")]
    summary: dict[str, object] = {"held_back_windows": len(windows), "labelled_hours": labelled_hours}
    summary["candidate_all"] = metrics(cand)
    if production:
        prod = truth_of(flag(windows, production), labels, labelled_hours)
        tables.append(per_sensor(prod, "production"))
        common = set(candidate) & set(production)
        in_common = lambda f: f.loc[pd.MultiIndex.from_frame(f[KEY]).isin(list(common))]  # noqa: E731
        summary["candidate"] = metrics(in_common(cand))
        summary["production"] = metrics(in_common(prod))
    else:
        summary["candidate"] = summary["candidate_all"]
        summary["production"] = None
    return summary, pd.concat(tables, ignore_index=True)
