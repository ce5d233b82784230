"""The hour the Azure Batch tests score, and the fixture that lands it (in-process DAG tier and live triggerer).

Registered as a pytest plugin (tests/conftest.py): a test asks for ``batch_landed`` by name.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from sensor_scoring import settings as config
from sensor_scoring.storage import BlobStorage, Storage
from sensor_scoring.tools.simulate import SimulationConfig, simulate_to_storage
from tests.support.helpers import START
from tests.support.training import train_and_register

H = timedelta(hours=1)
HOUR = START + 5 * H


def land_batch_hour(storage: Storage, containers: config.Containers) -> None:
    """Six simulated hours of 3 devices x 2 sensors, models ``v-batch`` trained on the five before HOUR, promoted."""
    simulate_to_storage(
        storage,
        SimulationConfig(devices=3, tags=2, seed=5),
        START,
        START + 6 * H,
        windows_container=containers.windows,
        labels_container=containers.labels,
    )
    train_and_register(storage, containers, START, HOUR, version="v-batch", promote=True)


@pytest.fixture
def batch_landed(blob: BlobStorage, containers: config.Containers) -> None:
    """The hour of :func:`land_batch_hour`, on the session's (key-authenticated) Azurite."""
    land_batch_hour(blob, containers)
