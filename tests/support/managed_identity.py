"""The one managed-identity endpoint of the tests, on loopback, so azure-identity's ``ManagedIdentityCredential`` and
``DefaultAzureCredential`` run for real here: the protocol Azure App Service and Functions give a workload
(``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` in its environment; azure-identity asks
``GET <endpoint>?api-version=...&resource=...&client_id=...`` with the header ``X-IDENTITY-HEADER``).

It issues a token per requested resource and identity, shaped as Entra ID issues them (a JWT with Entra's issuer,
the resource as audience, the tenant, the identity's client id as ``appid`` and an object id of its own, a validity
window), signed with a random key nobody checks: Azurite's ``--oauth basic`` accepts the storage ones
(``https://storage.azure.com``) and the fake Batch service (``tests/support/fake_batch.py``) the Batch ones, both
checking the claims and not the signature. A request without ``client_id`` is the system-assigned identity
(:attr:`ManagedIdentity.default_client_id`). Every request is recorded (:attr:`ManagedIdentity.asked`), and every
token's resource and client id (:attr:`ManagedIdentity.issued`).

The :func:`managed_identity` fixture (a pytest plugin of ``tests/conftest.py``) starts one and puts it in this
process's environment (and so its children's); the fake Batch service hands :meth:`ManagedIdentity.env` to the
tasks of a pool that has an identity, as a node's processes reach Azure's instance metadata endpoint.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

#: The tenant of the identities the endpoint issues tokens for.
TENANT = "72f988bf-0000-0000-0000-2d7cd011db47"
#: The Entra ID resource of Azure Storage (azure-storage-blob asks for ``<resource>/.default``).
STORAGE_RESOURCE = "https://storage.azure.com"
#: The Entra ID resource of Azure Batch (azure-batch asks for the scope ``<resource>/.default``).
BATCH_RESOURCE = "https://batch.core.windows.net/"
#: The variables that would make azure-identity pick another credential than the managed identity.
OTHER_CREDENTIAL_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ManagedIdentity:
    """A managed-identity token endpoint on loopback: ``start()``, :meth:`env`, ``stop()``."""

    def __init__(self, default_client_id: str = "00000000-0000-0000-0000-0000000000a1") -> None:
        self.default_client_id = default_client_id
        self.tenant_id = TENANT
        self.header = secrets.token_hex(8)
        self.asked: list[dict[str, str]] = []
        self.issued: dict[str, dict[str, str]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ManagedIdentity:
        handler = type("IdentityHandler", (_Handler,), {"identity": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="managed-identity")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the endpoint first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/msi/token"

    def env(self) -> dict[str, str]:
        """The environment that makes azure-identity's managed identity credential use this endpoint."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.header}

    def object_id(self, client_id: str | None = None) -> str:
        """The object (principal) id of the identity with ``client_id`` (None: the system-assigned one): what a
        user delegation key is bound to (``skoid``). Stable per identity, and not its client id, as in Entra."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"managed-identity:{client_id or self.default_client_id}"))

    def token(self, resource: str, client_id: str | None = None, *, lifetime_s: int = 3600) -> str:
        """An access token for ``resource`` of the identity ``client_id``, as Entra ID issues one."""
        client_id = client_id or self.default_client_id
        now = int(time.time())
        claims = {
            "aud": resource.rstrip("/"),
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "tid": self.tenant_id,
            "appid": client_id,
            "oid": self.object_id(client_id),
            "sub": self.object_id(client_id),
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + lifetime_s,
        }
        parts = [{"alg": "HS256", "typ": "JWT"}, claims]
        return ".".join(_b64url(json.dumps(p).encode()) for p in parts) + "." + _b64url(secrets.token_bytes(32))

    def asked_for(self) -> set[tuple[str, str | None]]:
        """What was asked, as (resource, client id or None for the system-assigned identity)."""
        return {(q.get("resource", ""), q.get("client_id")) for q in self.asked}


class _Handler(BaseHTTPRequestHandler):
    identity: ManagedIdentity

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.identity.asked.append(query)
        if url.path != "/msi/token" or self.headers.get("X-IDENTITY-HEADER") != self.identity.header:
            status, body = 401, {"error": "invalid_request", "error_description": "bad path or X-IDENTITY-HEADER"}
        elif not query.get("resource"):
            status, body = 400, {"error": "invalid_resource", "error_description": "no resource"}
        else:
            client_id = query.get("client_id") or self.identity.default_client_id
            token = self.identity.token(query["resource"], client_id)
            self.identity.issued[token] = {"resource": query["resource"], "client_id": client_id}
            status = 200
            body = {
                "access_token": token,
                "expires_on": str(int(time.time()) + 3600),
                "resource": query["resource"],
                "token_type": "Bearer",
                "client_id": client_id,
            }
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def managed_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagedIdentity]:
    """A started endpoint in this process's environment (and its children's), no other Azure credential there;
    stopped at the end."""
    identity = ManagedIdentity().start()
    for name, value in identity.env().items():
        monkeypatch.setenv(name, value)
    for name in OTHER_CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    try:
        yield identity
    finally:
        identity.stop()
