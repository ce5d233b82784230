"""A promoted model version for tests that need one, made from landed windows by the training DAG's own gather.

Not a training path of the product (``python -m sensor_scoring train``, the demo and the DAG all run
``steps.training``'s gather, train_shard, evaluate, register and promote): a fixture. It reads the range exactly as
the DAG does (``steps.training.gather`` with nothing held back: every hour trains, as tests of one or two hours
need), fits each shard with the function ``train_shard`` calls (``fitting.train_models``), keeping the
scikit-learn pipelines that parity tests compare the scorer with, and registers and moves the alias without a
gate, as a test's setup wants.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sensor_scoring import features as feature_sets, layout, settings as config, storage as st
from sensor_scoring.models import fitting, registry, stats
from sensor_scoring.runs.scope import Scope
from sensor_scoring.steps.training import gather
from sensor_scoring.storage import Storage

#: The training DAG form's defaults (dags/sensor_model_training.py) of the params ``steps.training.train_locally``
#: reads, as ``train`` and the demo pass them (tests/dag/test_dag_integrity.py checks they are the form's).
FORM_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {
        "holdout_hours": 6,
        "sensors_per_shard": 100,
        "nu": 0.02,
        "min_rows": 30,
        "false_alarm_rate": 0.02,
        "threshold_mads": None,
        "features": "window-v1",
        "adaptive_nu": True,
        "refit": True,
        "devices": [],
        "tags": [],
        "late_folders": 1,
        "promote": True,
    }
)


#: ``train``'s gate options that let any new version through: a test's range of an hour or two cannot hold the
#: default flagged share and false-alarm rate on its held-back hour (docs/models.md), and such tests check the path.
GATE_TAKES_ANY = ("--max-flagged-share", "1", "--gate-false-alarm-rate", "1")


def training_params(**overrides: Any) -> dict[str, Any]:
    """The params of a training run for ``train_locally``: the form's defaults with ``overrides``. A name the form
    does not have is refused, so a typo never trains on a default unnoticed."""
    unknown = sorted(set(overrides) - set(FORM_DEFAULTS))
    if unknown:
        raise TypeError(f"no training param {', '.join(unknown)}; the form's: {', '.join(FORM_DEFAULTS)}")
    return {**FORM_DEFAULTS, "devices": [], "tags": [], **overrides}


def train_and_register(
    storage: Storage,
    containers: config.Containers,
    start: datetime,
    end: datetime,
    *,
    version: str | None = None,
    promote: bool = False,
    nu: float = 0.02,
    min_rows: int = 30,
    threshold_mads: float | None = None,
    features: str = feature_sets.DEFAULT_FEATURE_SET,
) -> tuple[dict[str, object], list[fitting.TrainedModel]]:
    """Train on the valid windows [start, end) owns, register them as ``version`` (and point production at it when
    ``promote``). Returns the manifest and the fitted models, pipelines included."""
    version = version or registry.new_version_name()
    run = Scope(storage, containers, f"test training {version}", start, end)
    shards = gather(
        run,
        holdout_hours=0,
        sensors_per_shard=1_000_000,
        nu=nu,
        min_rows=min_rows,
        threshold_mads=threshold_mads,
        features=features,
    )
    trained: list[fitting.TrainedModel] = []
    windows = []
    for shard in shards:
        spec = st.read_parquet(storage, containers.staging, layout.TrainingRun(run.run_key).shard(shard.shard).input)
        windows.append(spec)
        trained += fitting.train_models(
            spec, nu=nu, min_rows=min_rows, threshold_mads=threshold_mads, features=features
        )
    storage.delete_prefix(containers.staging, layout.TrainingRun(run.run_key).prefix)
    trained.sort(key=lambda m: (m.device_id, m.tag))
    params = {"nu": nu, "min_rows": min_rows, "threshold_mads": threshold_mads, "features": features}
    manifest = registry.register(storage, containers.models, trained, version=version, params=params, promote=promote)
    import pandas as pd

    stats.store(storage, containers.models, version, trained, pd.concat(windows, ignore_index=True))
    return manifest, trained
