"""Print the Batch pool definition the azure_batch backend would create, plus a private registry's credentials.

The backend creates a missing pool without registry credentials (it can then pull only public images). For a
private registry (ACR), create the pool yourself from this definition; the backend then uses it as it is.

    ACR_PASSWORD=... python infra/batch/pool_json.py --registry-server myacr.azurecr.io --registry-username myacr > pool.json
    az batch pool create --json-file pool.json

Settings (pool id, VM size, caps, scorer image...) come from the same SCORING_BATCH_* / SCORING_SCORER_IMAGE
variables as in Airflow. The password is read from ACR_PASSWORD, never from the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from sensor_scoring.backends.azure_batch import BatchSettings, pool_options

PASSWORD_ENV = "ACR_PASSWORD"


def pool_definition(registry_server: str | None, username: str | None, password: str | None) -> dict:
    """The REST body of the pool (camelCase, as ``az batch pool create --json-file`` takes it)."""
    pool = pool_options(BatchSettings.from_env()).as_dict()
    if registry_server:
        if not (username and password):
            raise SystemExit(f"a registry needs --registry-username and ${PASSWORD_ENV}")
        pool["virtualMachineConfiguration"]["containerConfiguration"]["containerRegistries"] = [
            {"registryServer": registry_server, "username": username, "password": password}]
    return pool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry-server", help="e.g. myacr.azurecr.io")
    parser.add_argument("--registry-username")
    args = parser.parse_args(argv)
    json.dump(pool_definition(args.registry_server, args.registry_username, os.environ.get(PASSWORD_ENV)),
              sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
