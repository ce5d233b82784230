"""Alert receivers on loopback and the alert connections that point at them, shared by the DAG and system tiers.

Registered as a pytest plugin (tests/conftest.py), so a test asks for ``smtp_sink``, ``http_sink`` or
``alert_connections`` by name. Connections are ``AIRFLOW_CONN_*`` values in JSON form, as a deployment defines them.
"""

from __future__ import annotations

import email
import json
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dev.azurite import free_port

RECIPIENTS = ["ops@example.com", "oncall@example.com"]


class SmtpSink:
    """A real SMTP server (aiosmtpd) on a free loopback port, keeping what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[list[str], Message]] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's hook)
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


class HttpSink:
    """A small HTTP server on a free loopback port, keeping every POSTed JSON body and its path."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(
                    {"path": self.path, "content_type": self.headers.get("Content-Type"), "json": json.loads(body)}
                )
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    try:
        yield sink
    finally:
        sink.controller.stop()


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink()
    sink.thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()
        sink.thread.join(timeout=10)


def smtp_conn(port: int) -> str:
    """The ``scoring_smtp`` connection as documented in docs/operating.md (plain SMTP on loopback)."""
    return json.dumps(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {
                "to": ", ".join(RECIPIENTS),
                "from_email": "airflow@example.com",
                "disable_ssl": True,
                "disable_tls": True,
                "timeout": 5,
                "retry_limit": 0,
            },
        }
    )


def webhook_conn(port: int) -> str:
    """The ``scoring_alert_webhook`` connection: host/port/schema, path in extra ``endpoint``."""
    return json.dumps(
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": port,
            "schema": "http",
            "extra": {"endpoint": "/hooks/scoring"},
        }
    )


@pytest.fixture
def alert_connections(
    monkeypatch: pytest.MonkeyPatch, smtp_sink: SmtpSink, http_sink: HttpSink
) -> tuple[SmtpSink, HttpSink]:
    """Both alert channels configured for the test, pointing at its receivers."""
    monkeypatch.setenv("AIRFLOW_CONN_SCORING_SMTP", smtp_conn(smtp_sink.port))
    monkeypatch.setenv("AIRFLOW_CONN_SCORING_ALERT_WEBHOOK", webhook_conn(http_sink.port))
    return smtp_sink, http_sink
