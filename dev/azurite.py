"""Start and stop a real Azurite blob server on loopback, for ``make demo`` and the tests.

Azurite is installed by ``make`` from ``dev/node/package.json`` (npm). The server runs in its own
process group and is stopped through that group, never by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

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


class Azurite:
    """One Azurite blob server: ``start()``, ``connection_string``, ``stop()`` (also as a context manager)."""

    def __init__(self, location: str | os.PathLike[str], port: int | None = None, host: str = "127.0.0.1") -> None:
        self.location = Path(location)
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.host, self.port)

    def start(self, timeout_s: float = 60) -> Azurite:
        if not BINARY.exists():
            raise FileNotFoundError(f"{BINARY} is missing: run 'make install' (npm ci in dev/node)")
        self.location.mkdir(parents=True, exist_ok=True)
        log = open(self.location / "azurite.log", "ab")
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
