"""Print the Batch pool definition the azure_batch backend would create: as the Batch API takes it, or, with
``--identity``, as Azure Resource Manager takes it with the pool's user-assigned managed identity.

The backend creates a missing pool without registry credentials (it can then pull only public images) and
without an identity (the Batch service API cannot attach one). For a private registry (ACR) or a pool identity,
create the pool yourself from this definition; the backend then uses it as it is.

Key-free (the pool's identity pulls from the registry and is what the tasks reach storage as):

    python infra/batch/pool_json.py --identity $POOL_IDENTITY_ID --registry-server myacr.azurecr.io > pool-arm.json
    az rest --method put --url "https://management.azure.com$BATCH_ID/pools/$SCORING_BATCH_POOL_ID?api-version=2024-07-01" --body @pool-arm.json

With registry credentials instead (the Batch API's form; the password is read from ACR_PASSWORD, never from the
command line):

    ACR_PASSWORD=... python infra/batch/pool_json.py --registry-server myacr.azurecr.io --registry-username myacr > pool.json
    az batch pool create --json-file pool.json

Settings (pool id, VM size, caps, scorer image...) come from the same SCORING_BATCH_* / SCORING_SCORER_IMAGE
variables as in Airflow.
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


def arm_pool_definition(identity: str, registry_server: str | None) -> dict:
    """The same pool as an Azure Resource Manager body (``Microsoft.Batch/batchAccounts/pools``) with the
    user-assigned identity ``identity`` (its resource id), which also pulls from ``registry_server``: no secret."""
    pool = pool_definition(None, None, None)
    vm = pool["virtualMachineConfiguration"]
    container = dict(vm["containerConfiguration"], type="DockerCompatible")
    if registry_server:
        container["containerRegistries"] = [
            {"registryServer": registry_server, "identityReference": {"resourceId": identity}}]
    return {
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {identity: {}}},
        "properties": {
            "vmSize": pool["vmSize"],
            "taskSlotsPerNode": pool["taskSlotsPerNode"],
            "deploymentConfiguration": {
                "virtualMachineConfiguration": {
                    "imageReference": vm["imageReference"],
                    "nodeAgentSkuId": vm["nodeAgentSKUId"],
                    "containerConfiguration": container,
                }
            },
            "scaleSettings": {
                "autoScale": {"formula": pool["autoScaleFormula"], "evaluationInterval": pool["autoScaleEvaluationInterval"]}
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry-server", help="e.g. myacr.azurecr.io")
    parser.add_argument("--registry-username", help="only without --identity: the registry's user")
    parser.add_argument("--identity", help="resource id of the pool's user-assigned managed identity (ARM body)")
    args = parser.parse_args(argv)
    if args.identity:
        if args.registry_username:
            raise SystemExit("with --identity the identity pulls from the registry: no --registry-username")
        body = arm_pool_definition(args.identity, args.registry_server)
    else:
        body = pool_definition(args.registry_server, args.registry_username, os.environ.get(PASSWORD_ENV))
    json.dump(body, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
