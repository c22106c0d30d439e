"""The HTTP listener of a real server: health, the headers every response carries, JSON errors
for unknown routes and methods, bounded bodies, and a graceful stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from credbroker.app import RunningServer, start_server
from credbroker.config import Settings
from credbroker.rest.app import SECURITY_HEADERS

EVERY_RESPONSE_HEADERS = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in EVERY_RESPONSE_HEADERS.items():
        assert response.headers.get_list(name) == [value], name
    assert "server" not in response.headers


async def test_healthz_serving(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "SERVING"}
    assert response.headers["cache-control"] == "no-store"
    assert_security_headers(response)


async def test_healthz_follows_the_serving_state(server: RunningServer, http: Any) -> None:
    server.serving.serving = False
    try:
        response = await http.get("/healthz")
    finally:
        server.serving.serving = True
    assert response.status_code == 503
    assert response.json() == {"status": "NOT_SERVING"}
    assert_security_headers(response)


async def test_head_healthz(http: httpx.AsyncClient) -> None:
    response = await http.head("/healthz")
    assert response.status_code == 200
    assert response.content == b""


async def test_unknown_route_is_a_json_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/no/such/route?connect_session_token=cbcs_x")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_route"
    assert_security_headers(response)


async def test_wrong_method_is_a_json_405(http: httpx.AsyncClient) -> None:
    response = await http.post("/healthz", json={})
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]
    assert_security_headers(response)


async def test_body_beyond_the_limit_is_refused(server: RunningServer, http: Any) -> None:
    response = await http.request(
        "GET", "/healthz", content=b"x" * (300 * 1024), headers={"content-type": "text/plain"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert_security_headers(response)


async def test_http_can_be_turned_off(
    settings_factory: Callable[..., Settings], backend: Any, keyring: Any
) -> None:
    running = await start_server(settings_factory(http_listen=""), backend, keyring)
    try:
        assert running.http is None and running.http_port == 0 and running.public_url == ""
    finally:
        await running.stop(0)


async def test_public_url_defaults_to_the_bound_address(server: RunningServer) -> None:
    assert server.public_url == f"http://127.0.0.1:{server.http_port}"


async def test_public_url_setting_wins(
    settings_factory: Callable[..., Settings], backend: Any, keyring: Any
) -> None:
    settings = settings_factory(public_url="https://broker.example/")
    running = await start_server(settings, backend, keyring)
    try:
        assert running.public_url == "https://broker.example"
    finally:
        await running.stop(0)


@pytest.mark.parametrize(
    "url", ["ftp://x", "https://", "https://a/?q=1", "https://u:p@host", "https://a/#f", "x"]
)
def test_public_url_is_validated(settings_factory: Callable[..., Settings], url: str) -> None:
    with pytest.raises(ValueError, match="public_url"):
        settings_factory(public_url=url)


@pytest.mark.parametrize("address", ["nonsense", "host:", ":80", "127.0.0.1:70000"])
def test_http_listen_is_validated(settings_factory: Callable[..., Settings], address: str) -> None:
    with pytest.raises(ValueError, match="http_listen"):
        settings_factory(http_listen=address)


async def test_stop_drains_and_closes_the_port(
    settings_factory: Callable[..., Settings], backend: Any, keyring: Any
) -> None:
    running = await start_server(settings_factory(), backend, keyring)
    base = f"http://127.0.0.1:{running.http_port}"
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/healthz")).status_code == 200
        await running.stop(1.0)
        with pytest.raises(httpx.TransportError):
            await client.get("/healthz")


async def test_busy_http_port_fails_the_start_cleanly(
    settings_factory: Callable[..., Settings], backend: Any, keyring: Any, server: RunningServer
) -> None:
    from credbroker.bootstrap import StartupError

    busy = f"127.0.0.1:{server.http_port}"
    with pytest.raises(StartupError, match=busy):
        await start_server(settings_factory(http_listen=busy), backend, keyring)
