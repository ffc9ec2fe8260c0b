"""Fixtures for interoperability tests: the app served over real HTTP, OAuth tokens, API clients."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

PLATFORM_ORG = "qs-health-commission"
SECRET = "interop-secret-value"


@dataclass(frozen=True)
class LiveServer:
    """The running app: its root URL (no trailing slash) and FHIR base."""

    url: str

    @property
    def fhir_base(self) -> str:
        return f"{self.url}/fhir"


def fetch_token(server: LiveServer, client_id: str, secret: str, scope: str | None = None) -> str:
    """A bearer token from POST /oauth/token (client credentials, HTTP Basic), over the network."""
    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    response = requests.post(f"{server.url}/oauth/token", data=data, auth=(client_id, secret), timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    return str(body["access_token"])


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    """The app served by werkzeug on a free loopback port in a background thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="interop-live-server", daemon=True
    )
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def platform_credentials(make_api_client: Callable[..., tuple[str, str]]) -> tuple[str, str]:
    """The county platform client (sees and writes everything)."""
    return make_api_client("county-platform", "system/*.cruds", PLATFORM_ORG, secret=SECRET)


@pytest.fixture
def platform_token(live_server: LiveServer, platform_credentials: tuple[str, str]) -> str:
    """A bearer token of the county platform."""
    return fetch_token(live_server, *platform_credentials)
