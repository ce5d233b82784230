"""A managed-identity endpoint on loopback, so ``ManagedIdentityCredential`` and ``DefaultAzureCredential`` run
for real here: the protocol Azure App Service and Functions give a workload (``IDENTITY_ENDPOINT`` and
``IDENTITY_HEADER`` in its environment; azure-identity asks ``GET <endpoint>?resource=...&client_id=...``).

It hands out tokens of :class:`dev.azurite.TokenCredential`, which Azurite's OAuth mode accepts, and records what
was asked (the client id of a user-assigned identity). Started and stopped by the fixture, on its own thread.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from dev.azurite import TokenCredential


@dataclass
class IdentityEndpoint:
    url: str
    header: str
    credential: TokenCredential
    asked: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def managed_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEndpoint]:
    """A loopback managed-identity endpoint in this process's environment (and its children's)."""
    endpoint = IdentityEndpoint("", secrets.token_hex(8), TokenCredential())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            if self.headers.get("X-IDENTITY-HEADER") != endpoint.header:
                self.send_error(401, "wrong X-IDENTITY-HEADER")
                return
            endpoint.asked.append(query)
            token = endpoint.credential.get_token(query.get("resource", ""))
            body = json.dumps(
                {
                    "access_token": token.token,
                    "expires_on": str(token.expires_on),
                    "resource": query.get("resource", ""),
                    "token_type": "Bearer",
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_port}/msi/token"
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", endpoint.header)
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
