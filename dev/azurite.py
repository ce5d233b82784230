"""Start and stop a real Azurite blob server on loopback, for ``make demo`` and the tests.

Azurite is installed by ``make`` from ``dev/node/package.json`` (npm). The server runs in its own
process group and is stopped through that group, never by name.

``Azurite(..., oauth=True)`` is its OAuth mode, how an Entra ID deployment is tested here: HTTPS with a certificate
generated for the server (signed by a CA generated with it; clients get that CA as their bundle, verification stays
on) and ``--oauth basic``, which accepts bearer tokens of Entra ID's form (issuer, audience, lifetime checked;
signature and roles not). :class:`TokenCredential` makes such tokens. Azurite keeps accepting its key in that mode
too, so a test that must prove no key was used reads the server's debug log (``debug_log=True``), which records
every request with its headers, whichever process sent it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BINARY = REPO / "dev" / "node" / "node_modules" / ".bin" / "azurite-blob"
#: Azurite's public, documented development account; not a secret.
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def connection_string(host: str, port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://{host}:{port}/{ACCOUNT};"
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenCredential:
    """An azure-core token credential whose tokens Azurite's ``--oauth basic`` accepts: a JWT with Entra ID's
    issuer, the storage audience and a lifetime, for a fixed tenant and object id (a user delegation key is
    bound to them). Unsigned: basic OAuth checks no signature. ``requests`` counts the tokens handed out."""

    def __init__(self, lifetime: timedelta = timedelta(hours=1)) -> None:
        self.tenant_id = str(uuid.uuid4())
        self.object_id = str(uuid.uuid4())
        self.lifetime = lifetime
        self.requests = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.requests += 1
        now = datetime.now(timezone.utc)
        expires = now + self.lifetime
        claims = {
            "aud": "https://storage.azure.com",
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": int(now.timestamp()) - 60,
            "nbf": int(now.timestamp()) - 60,
            "exp": int(expires.timestamp()),
            "oid": self.object_id,
            "tid": self.tenant_id,
            "sub": self.object_id,
        }
        header = {"alg": "none", "typ": "JWT"}
        token = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims)) + "." + _b64url(b"unsigned")
        return AccessToken(token, int(expires.timestamp()))

    def close(self) -> None:
        pass


def make_certificate(folder: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``host`` (IP and localhost) signed by it, as PEM files in ``folder``:
    (CA bundle, server certificate, server key). Made fresh per server; the key never leaves ``folder``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(timezone.utc)

    def build(subject: str, issuer: x509.Name | None, key: Any, signer: Any, ca: bool) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            names: list[x509.GeneralName] = [x509.DNSName("localhost")]
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("sensor-scoring test CA", None, ca_key, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = build(host, ca.subject, server_key, ca_key, ca=False)
    folder.mkdir(parents=True, exist_ok=True)
    paths = (folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


class Azurite:
    """One Azurite blob server: ``start()``, ``connection_string``, ``stop()`` (also as a context manager).

    ``oauth=True``: HTTPS and ``--oauth basic`` (see the module); ``account_url`` and ``ca_bundle`` are what a
    client needs then. ``debug_log=True``: every request with its headers in ``debug_log_path``.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        oauth: bool = False,
        debug_log: bool = False,
    ) -> None:
        self.location = Path(location)
        self.host = host
        self.port = port or free_port(host)
        self.oauth = oauth
        self.debug_log_path: Path | None = self.location / "debug.log" if debug_log else None
        self.ca_bundle: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.oauth else "http"

    @property
    def account_url(self) -> str:
        """The account's blob endpoint: the ``SCORING_STORAGE`` of Entra ID authentication (OAuth mode)."""
        return f"{self.scheme}://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        if self.oauth:
            return connection_string(self.host, self.port).replace("http", "https")
        return connection_string(self.host, self.port)

    def _tls_arguments(self) -> list[str]:
        """``--oauth basic`` with a certificate made for this server (once: a restart keeps it)."""
        if not self.oauth:
            return []
        folder = self.location / "tls"
        if self.ca_bundle is None or not (folder / "server.pem").exists():
            self.ca_bundle, _, _ = make_certificate(folder, self.host)
        return ["--oauth", "basic", "--cert", str(folder / "server.pem"), "--key", str(folder / "server-key.pem")]

    def requests(self) -> list[dict[str, Any]]:
        """Every request the server received so far, from its debug log: method, url and headers (lowercase)."""
        if self.debug_log_path is None:
            raise RuntimeError("this Azurite was started without debug_log=True")
        found = []
        marker, headers_marker = "RequestURL=", " RequestHeaders:"
        for line in self.debug_log_path.read_text(errors="replace").splitlines():
            if "BlobStorageContextMiddleware: RequestMethod=" not in line or marker not in line:
                continue
            method = line.split("RequestMethod=", 1)[1].split(" ", 1)[0]
            url = line.split(marker, 1)[1].split(headers_marker, 1)[0]
            body = line.split(headers_marker, 1)[1].rsplit(" ClientIP=", 1)[0]
            headers = {str(k).lower(): v for k, v in json.loads(body).items()}
            found.append({"method": method, "url": url, "headers": headers})
        return found

    def start(self, timeout_s: float = 60) -> Azurite:
        if not BINARY.exists():
            raise FileNotFoundError(f"{BINARY} is missing: run 'make install' (npm ci in dev/node)")
        self.location.mkdir(parents=True, exist_ok=True)
        log = open(self.location / "azurite.log", "ab")
        debug = ["--debug", str(self.debug_log_path)] if self.debug_log_path else []
        self.proc = subprocess.Popen(
            [
                str(BINARY),
                "--blobHost",
                self.host,
                "--blobPort",
                str(self.port),
                "--location",
                str(self.location),
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                *self._tls_arguments(),
                *debug,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"Azurite exited with {self.proc.returncode}; see {self.location / 'azurite.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Azurite did not listen on {self.host}:{self.port} within {timeout_s}s")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """Terminate the server's process group; kill it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
