"""The outbound policy of credential verification: which addresses may be reached, plain http
only to allow-listed networks, bounded redirects on the same origin only."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pydantic
import pytest
import pytest_asyncio

from credbroker.domain.injection import ResolvedAuth
from credbroker.domain.models import VerificationState
from credbroker.domain.providers import Verification
from credbroker.domain.verification import DestinationNotAllowedError
from credbroker.outbound import AddressGuard, HttpCredentialProbe, parse_networks
from credbroker.v1 import connection_service_pb2_grpc, integration_service_pb2_grpc
from credbroker.v1 import resources_pb2 as rpb

FORBIDDEN = {
    "127.0.0.1": "127.0.0.0/8",
    "10.0.0.1": "10.0.0.0/8",
    "172.16.5.4": "172.16.0.0/12",
    "192.168.1.1": "192.168.0.0/16",
    "169.254.169.254": "169.254.169.254/32",
    "100.64.0.1": "100.64.0.0/10",
    "::1": "::1/128",
    "fd00::1": "fc00::/7",
    "fe80::1": "fe80::/10",
    "0.0.0.0": "0.0.0.0/32",  # noqa: S104 - an address to refuse, not to bind
    "224.0.0.1": "224.0.0.0/4",
    "::ffff:127.0.0.1": "::ffff:127.0.0.0/104",
}


@pytest.mark.parametrize(("address", "network"), sorted(FORBIDDEN.items()))
def test_guard_refuses_non_public_addresses_unless_allow_listed(address: str, network: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not AddressGuard().permits(ip)
    assert not AddressGuard(parse_networks("203.0.113.0/24")).permits(ip)
    assert AddressGuard(parse_networks(f"203.0.113.0/24, {network}")).permits(ip)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"])
def test_guard_permits_public_addresses(address: str) -> None:
    assert AddressGuard().permits(ipaddress.ip_address(address))


def test_parse_networks() -> None:
    assert parse_networks("") == ()
    assert parse_networks(" 127.0.0.0/8 , ::1/128 ,") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert parse_networks("10.1.2.3/8") == (ipaddress.ip_network("10.0.0.0/8"),)
    for garbage in ("not-a-cidr", "10.0.0.0/33", "127.0.0.0/8, 300.1.1.1"):
        with pytest.raises(ValueError) as caught:
            parse_networks(garbage)
        bad = garbage.split(",")[-1].strip()
        assert repr(bad) in str(caught.value)


def test_settings_refuse_a_bad_allow_list(settings_factory: Any) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        settings_factory(outbound_allow="10.0.0.0/8, garbage")
    assert "garbage" in str(caught.value)


async def test_resolve_checks_every_address() -> None:
    with pytest.raises(DestinationNotAllowedError):
        await AddressGuard().resolve("127.0.0.1", 443)
    with pytest.raises(DestinationNotAllowedError):
        await AddressGuard().resolve("169.254.169.254", 443)
    with pytest.raises(DestinationNotAllowedError):
        await AddressGuard().resolve("localhost", 443)
    assert await AddressGuard().resolve("8.8.8.8", 443) == "8.8.8.8"
    allowed = AddressGuard(parse_networks("127.0.0.0/8"))
    assert await allowed.resolve("127.0.0.1", 80, plain_http=True) == "127.0.0.1"
    with pytest.raises(DestinationNotAllowedError):  # public, but plain http is not allowed
        await AddressGuard().resolve("8.8.8.8", 80, plain_http=True)


# ---------------------------------------------------------------------------------------------
# HttpCredentialProbe against the fake provider


@pytest_asyncio.fixture
async def open_probe() -> AsyncIterator[Any]:
    probes: list[HttpCredentialProbe] = []

    def make(allow: str = "127.0.0.0/8", **kwargs: Any) -> HttpCredentialProbe:
        probe = HttpCredentialProbe(AddressGuard(parse_networks(allow)), timeout=1.0, **kwargs)
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        await probe.close()


def bearer(base_url: str, key: str) -> ResolvedAuth:
    return ResolvedAuth(base_url, {"authorization": f"Bearer {key}"}, {})


async def test_plain_http_to_a_non_allow_listed_address_is_refused(
    open_probe: Any, fake: Any
) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    fake.accept(key)
    for allow in ("", "10.0.0.0/8"):
        with pytest.raises(DestinationNotAllowedError):
            await open_probe(allow).probe(
                bearer(f"{fake.url}/openai", key), Verification("GET", ("/v1/models",))
            )
    with pytest.raises(DestinationNotAllowedError):  # a public address: still not over http
        await open_probe("").probe(bearer("http://8.8.8.8", key), Verification("GET", ("/",)))
    assert fake.requests == []
    result = await open_probe().probe(
        bearer(f"{fake.url}/openai", key), Verification("GET", ("/v1/models",))
    )
    assert result.state is VerificationState.VERIFIED


async def test_only_http_and_https(open_probe: Any) -> None:
    for url in ("ftp://127.0.0.1", "file:///etc", "gopher://127.0.0.1:70"):
        with pytest.raises(DestinationNotAllowedError):
            await open_probe().probe(bearer(url, "k"), Verification("GET", ("/x",)))


async def test_https_to_loopback_is_refused_without_allow_list(open_probe: Any, fake: Any) -> None:
    with pytest.raises(DestinationNotAllowedError):
        await open_probe("").probe(
            bearer(f"https://127.0.0.1:{fake.port}/openai", "k"), Verification("GET", ("/x",))
        )
    assert fake.requests == []


async def test_paths_are_tried_in_order_first_success_wins(open_probe: Any, fake: Any) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    fake.accept(key)
    fake.fail("/openai/a", 404)
    result = await open_probe().probe(
        bearer(f"{fake.url}/openai", key), Verification("GET", ("/a", "/b", "/c"))
    )
    assert result.state is VerificationState.VERIFIED
    assert [r.path for r in fake.requests] == ["/openai/a", "/openai/b"]


@pytest.mark.parametrize(("hops", "state"), [(3, "VERIFIED"), (4, "ERROR")])
async def test_at_most_three_redirects(open_probe: Any, fake: Any, hops: int, state: str) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    fake.accept(key)
    for hop in range(hops):
        fake.redirect(f"/openai/r{hop}", f"/openai/r{hop + 1}")
    result = await open_probe().probe(
        bearer(f"{fake.url}/openai", key), Verification("GET", ("/r0",))
    )
    assert result.state is VerificationState[state]
    assert len(fake.requests) == min(hops + 1, 4)


async def test_redirect_to_another_origin_is_not_followed(
    open_probe: Any, fake: Any, other_origin: Any
) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    fake.accept(key)
    other_origin.accept(key)
    for location in (
        f"{other_origin.url}/openai/v1/models",
        f"//127.0.0.1:{other_origin.port}/openai/v1/models",
        f"http://localhost:{fake.port}/openai/v1/models",
    ):
        fake.redirect("/openai/v1/models", location)
        result = await open_probe().probe(
            bearer(f"{fake.url}/openai", key), Verification("GET", ("/v1/models",))
        )
        assert result.state is VerificationState.ERROR
        assert result.http_status == 302
    assert other_origin.requests == []
    assert [r.path for r in fake.requests] == ["/openai/v1/models"] * 3


async def test_query_parameters_are_not_carried_over_a_redirect(open_probe: Any, fake: Any) -> None:
    key = f"AIza-{uuid.uuid4().hex}"
    fake.accept(key)
    fake.redirect("/google-gemini/v1beta/models", "/google-gemini/v1/models")
    result = await open_probe().probe(
        ResolvedAuth(f"{fake.url}/google-gemini", {}, {"key": key}),
        Verification("GET", ("/v1beta/models",)),
    )
    assert result.state is VerificationState.REJECTED
    assert [r.query for r in fake.requests] == [{"key": key}, {}]


async def test_timeout_is_an_error(open_probe: Any, fake: Any) -> None:
    fake.slow("/openai/v1/models", 3.0)
    result = await open_probe().probe(
        bearer(f"{fake.url}/openai", "k"), Verification("GET", ("/v1/models",))
    )
    assert result.state is VerificationState.ERROR
    assert result.http_status == 0
    assert result.error  # names the failure (an exception type), never a credential


# ---------------------------------------------------------------------------------------------
# through the API: a server whose outbound policy has no allow-list


async def test_generic_integration_pointing_at_loopback_is_refused(
    start_vserver: Any, fake: Any, make_vclient: Any
) -> None:
    running = await start_vserver(outbound_allow="")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        client = await make_vclient()
        client.integrations = integration_service_pb2_grpc.IntegrationServiceStub(channel)
        client.connections = connection_service_pb2_grpc.ConnectionServiceStub(channel)
        key = f"sk-{uuid.uuid4().hex}"
        fake.accept(key)
        for base_url in (f"{fake.url}/generic", f"https://127.0.0.1:{fake.port}/generic"):
            integration_id = await client.integration(
                "api-key", {"base_url": base_url, "verification_path": "/me"}
            )
            error, info = await client.fails(
                client.create(integration_id, client.api_key(key), connection_id="x"),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            assert info.reason == "DESTINATION_NOT_ALLOWED"
            assert key.encode() not in client.error_text(error)
            await client.fails(client.get(integration_id, "x"), grpc.StatusCode.NOT_FOUND)
        assert fake.requests == []


async def test_generic_integration_with_allow_list_is_verified(vclient: Any, fake: Any) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    fake.accept(key)
    integration_id = await vclient.integration(
        "api-key", {"base_url": f"{fake.url}/generic", "verification_path": "/me"}
    )
    created = await vclient.create(integration_id, vclient.api_key(key))
    assert created.verification.state == rpb.Verification.VERIFIED
    (request,) = fake.requests
    assert request.path == "/generic/me"
    assert request.headers["authorization"] == f"Bearer {key}"


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a00:1",  # NAT64 form of 10.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 form of 169.254.169.254
        "::127.0.0.1",  # IPv4-compatible loopback
        "::ffff:10.0.0.1",  # IPv4-mapped private
    ],
)
def test_ipv6_forms_of_private_ipv4_are_refused(address: str) -> None:
    assert not AddressGuard().permits(ipaddress.ip_address(address))


async def test_unresolvable_host_says_so_rather_than_blaming_the_policy(
    vclient: Any, fake: Any
) -> None:
    """`.invalid` never resolves (RFC 2606): the error names DNS, not the outbound policy."""
    key = f"sk-{uuid.uuid4().hex}"
    integration_id = await vclient.integration(
        "api-key", {"base_url": "https://credbroker-test.invalid", "verification_path": "/me"}
    )
    error, info = await vclient.fails(
        vclient.create(integration_id, vclient.api_key(key), connection_id="x"),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert info.reason == "DESTINATION_NOT_ALLOWED"
    assert "does not resolve" in error.details()
    assert "outbound policy" not in error.details()
    assert key.encode() not in vclient.error_text(error)
