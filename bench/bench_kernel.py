"""The scoring kernel against a scikit-learn loop and a fused compiled single-thread reference, same process.

Claim under test: ``sensor_scoring.scorer.decision_function`` is at least 50x a loop of scikit-learn's own
``pipeline.decision_function`` per sensor, within 1.5x of a plain fused loop compiled with numba on one thread,
and equal to scikit-learn within 1e-9 on every window.

Models are fitted the way the project fits them: ``fitting.train_models`` (``fit_pipeline`` per sensor) on three
simulated hours of windows (``tools.simulate``: daily cycle, noise, injected spikes, stuck values, drift and
dropouts), once with the default nu (0.02) and once with nu=0.05 (more support vectors). The next simulated hour,
60 windows per sensor, is scored. All three contenders get the same input: the feature matrix, each row's model
index, and the list of ``ModelArrays``; the reference packs that list into flat arrays inside its timing, as the
project kernel does. Each contender runs ``--repeats`` times after one warm-up (numba compiles in the warm-up);
medians are reported. numba is a development dependency only (requirements-dev.txt).

    .venv/bin/python bench/bench_kernel.py [--devices 250 --tags 4] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numba
import numpy as np
import pandas as pd
from bench_scoring import machine

from sensor_scoring.features import feature_matrix
from sensor_scoring.models import fitting
from sensor_scoring.scorer import ModelArrays, decision_function, sensor_codes
from sensor_scoring.tools.simulate import SimulationConfig, simulate_hour
from sensor_scoring.windows import aggregate_readings

HERE = Path(__file__).resolve().parent
START = datetime(2026, 11, 24, tzinfo=timezone.utc)


@numba.njit(cache=False, fastmath=False, parallel=False)
def _fused(features, model_index, mean, scale, gamma, intercept, sv_start, sv, dual, out):  # pragma: no cover
    """One row at a time: scale, then sum dual * exp(-gamma * |x - sv|^2) over the row's model, no temporaries."""
    n_feat = features.shape[1]
    x = np.empty(n_feat)
    for r in range(features.shape[0]):
        m = model_index[r]
        for f in range(n_feat):
            x[f] = (features[r, f] - mean[m, f]) / scale[m, f]
        acc = 0.0
        for s in range(sv_start[m], sv_start[m + 1]):
            d2 = 0.0
            for f in range(n_feat):
                d = x[f] - sv[s, f]
                d2 += d * d
            acc += dual[s] * np.exp(-gamma[m] * d2)
        out[r] = acc + intercept[m]


def reference(features: np.ndarray, model_index: np.ndarray, arrays: list[ModelArrays]) -> np.ndarray:
    """The fused reference kernel, from the same inputs as the project's ``decision_function``."""
    widths = np.array([len(m.dual_coef) for m in arrays])
    sv_start = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    out = np.empty(len(features))
    _fused(
        np.ascontiguousarray(features),
        model_index,
        np.stack([m.mean for m in arrays]),
        np.stack([m.scale for m in arrays]),
        np.array([m.gamma for m in arrays]),
        np.array([m.intercept for m in arrays]),
        sv_start,
        np.ascontiguousarray(np.concatenate([m.support_vectors for m in arrays])),
        np.concatenate([m.dual_coef for m in arrays]),
        out,
    )
    return out


def sklearn_loop(features: np.ndarray, model_index: np.ndarray, pipelines: list) -> np.ndarray:
    """scikit-learn itself, one ``pipeline.decision_function`` call per sensor."""
    out = np.empty(len(features))
    order = np.argsort(model_index, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(model_index, minlength=len(pipelines)))])
    for m, pipeline in enumerate(pipelines):
        rows = order[bounds[m] : bounds[m + 1]]
        if len(rows):
            out[rows] = pipeline.decision_function(features[rows])
    return out


def timed(fn, repeats: int) -> tuple[float, list[float], np.ndarray]:
    result = fn()  # warm-up (numba compiles here)
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples), samples, result


def simulated(devices: int, tags: int, hours: int, start: datetime) -> pd.DataFrame:
    cfg = SimulationConfig(devices=devices, tags=tags, seed=0)
    return pd.concat(
        [aggregate_readings(simulate_hour(cfg, start + timedelta(hours=h))[0]) for h in range(hours)],
        ignore_index=True,
    )


def measure(train: pd.DataFrame, hour: pd.DataFrame, nu: float, repeats: int) -> dict:
    trained = fitting.train_models(train, nu=nu)
    by_key = {(m.device_id, m.tag): m for m in trained}
    codes, keys = sensor_codes(hour)
    picked = [by_key[k] for k in keys]
    arrays = [m.arrays for m in picked]
    features = feature_matrix(hour)
    project_s, project_samples, project = timed(lambda: decision_function(features, codes, arrays), repeats)
    reference_s, reference_samples, ref = timed(lambda: reference(features, codes, arrays), repeats)
    loop_s, loop_samples, loop = timed(lambda: sklearn_loop(features, codes, [m.pipeline for m in picked]), 3)
    widths = [len(a.dual_coef) for a in arrays]
    return {
        "nu": nu,
        "sensors": len(keys),
        "windows": len(hour),
        "support_vectors": {"median": statistics.median(widths), "min": min(widths), "max": max(widths)},
        "project_s": round(project_s, 5),
        "sklearn_loop_s": round(loop_s, 4),
        "reference_s": round(reference_s, 5),
        "max_abs_diff": float(np.max(np.abs(project - loop))),
        "reference_max_abs_diff": float(np.max(np.abs(ref - loop))),
        "speedup_vs_sklearn_loop": round(loop_s / project_s, 1),
        "ratio_to_reference": round(project_s / reference_s, 2),
        "samples_project_s": [round(x, 5) for x in project_samples],
        "samples_reference_s": [round(x, 5) for x in reference_samples],
        "samples_sklearn_loop_s": [round(x, 4) for x in loop_samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=250)
    parser.add_argument("--tags", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "kernel.json")
    args = parser.parse_args()
    began, load_at_start = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    windows = simulated(args.devices, args.tags, 4, START)
    train = windows[windows["window_end"] < START + timedelta(hours=3)]
    hour = windows[windows["window_end"] >= START + timedelta(hours=3)].reset_index(drop=True)
    runs = [measure(train, hour, nu, args.repeats) for nu in (0.02, 0.05)]
    keep = ("sensors", "project_s", "sklearn_loop_s", "reference_s", "max_abs_diff")
    results = {
        "machine": {
            **machine(),
            "numba": numba.__version__,
            "load_average_at_start": load_at_start,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "kernel": {k: runs[0][k] for k in keep},
        "runs": runs,
    }
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_s"] = round(time.perf_counter() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for run in runs:
        print(json.dumps({k: v for k, v in run.items() if not k.startswith("samples")}))
    print(f"wrote {args.out} in {results['total_s']} s")


if __name__ == "__main__":
    main()
