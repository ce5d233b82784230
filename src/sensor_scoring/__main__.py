"""``python -m sensor_scoring``: the one entry point shared by the CLI, the local backend and Azure Batch tasks."""

from __future__ import annotations

from sensor_scoring.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
