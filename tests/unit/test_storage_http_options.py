"""The HTTP client reads the environment per request only when it holds a proxy; a CA bundle is kept either way."""

from __future__ import annotations

import pytest

from sensor_scoring.storage.blob import http_options

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def bare_environment(monkeypatch):
    for name in (*PROXY_VARIABLES, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_a_proxy_the_environment_is_not_read_per_request(bare_environment):
    assert http_options() == {"use_env_settings": False}


def test_a_ca_bundle_of_the_environment_is_passed_explicitly(bare_environment):
    bare_environment.setenv("CURL_CA_BUNDLE", "/curl.pem")
    assert http_options() == {"use_env_settings": False, "connection_verify": "/curl.pem"}
    bare_environment.setenv("REQUESTS_CA_BUNDLE", "/requests.pem")  # requests prefers its own
    assert http_options() == {"use_env_settings": False, "connection_verify": "/requests.pem"}


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY"])
def test_with_a_proxy_the_client_keeps_reading_the_environment(bare_environment, name):
    bare_environment.setenv(name, "http://proxy.example:3128")
    assert http_options() == {}
