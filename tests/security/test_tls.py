"""TLS and mutual TLS of the gRPC port, with a throwaway PKI generated per module.

The PKI: a CA, a server certificate for ``127.0.0.1`` / ``localhost`` (SAN IP and DNS), a client
certificate signed by the CA, and a second, unrelated CA with its own client certificate (what an
attacker holding *some* valid-looking certificate would present). Everything binds 127.0.0.1.
"""

from __future__ import annotations

import datetime
import ipaddress
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pydantic
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

import credbroker.app
from credbroker.app import RunningServer
from credbroker.config import Settings
from credbroker.v1 import integration_service_pb2 as ipb
from credbroker.v1 import integration_service_pb2_grpc as igrpc
from credbroker.v1 import resources_pb2 as rpb

RPC_TIMEOUT = 5.0

# ---------------------------------------------------------------------------------------------
# throwaway PKI


@dataclass(frozen=True)
class Issued:
    key_pem: bytes
    cert_pem: bytes
    key_path: Path
    cert_path: Path


@dataclass(frozen=True)
class Pki:
    ca: Issued
    server: Issued
    client: Issued
    other_ca: Issued
    other_client: Issued


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(
    folder: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> Issued:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_path = folder / f"{name}.key"
    cert_path = folder / f"{name}.crt"
    key_path.write_bytes(key_pem)
    cert_path.write_bytes(cert_pem)
    return Issued(key_pem, cert_pem, key_path, cert_path)


def _make_ca(folder: Path, name: str) -> tuple[Issued, ec.EllipticCurvePrivateKey, x509.Name]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"credbroker test {name}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(folder, name, key, cert), key, subject


def _issue(
    folder: Path,
    name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_subject: x509.Name,
    *,
    server: bool,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return _write(folder, name, key, builder.sign(ca_key, hashes.SHA256()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_subject = _make_ca(folder, "ca")
    other_ca, other_key, other_subject = _make_ca(folder, "other-ca")
    return Pki(
        ca=ca,
        server=_issue(folder, "server", ca_key, ca_subject, server=True),
        client=_issue(folder, "client", ca_key, ca_subject, server=False),
        other_ca=other_ca,
        other_client=_issue(folder, "other-client", other_key, other_subject, server=False),
    )


# ---------------------------------------------------------------------------------------------
# servers


@pytest_asyncio.fixture(scope="module")
async def tls_server(
    pki: Pki, settings_factory: Callable[..., Settings], backend: Any, keyring: Any
) -> AsyncIterator[RunningServer]:
    settings = settings_factory(tls_cert=pki.server.cert_path, tls_key=pki.server.key_path)
    running = await credbroker.app.start_server(settings, backend, keyring)
    try:
        yield running
    finally:
        await running.stop(0)


@pytest_asyncio.fixture(scope="module")
async def mtls_server(
    pki: Pki, settings_factory: Callable[..., Settings], backend: Any, keyring: Any
) -> AsyncIterator[RunningServer]:
    settings = settings_factory(
        tls_cert=pki.server.cert_path,
        tls_key=pki.server.key_path,
        tls_client_ca=pki.ca.cert_path,
    )
    running = await credbroker.app.start_server(settings, backend, keyring)
    try:
        yield running
    finally:
        await running.stop(0)


# ---------------------------------------------------------------------------------------------
# helpers


def _create_request() -> ipb.CreateIntegrationRequest:
    return ipb.CreateIntegrationRequest(
        integration=rpb.Integration(
            integration_id=f"tls-{uuid.uuid4().hex[:12]}", provider="openai"
        )
    )


async def _create_integration(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    """CreateIntegration over ``channel``: OK, or the failure code."""
    stub = igrpc.IntegrationServiceStub(channel)
    try:
        reply = await stub.CreateIntegration(
            _create_request(), metadata=metadata, timeout=RPC_TIMEOUT
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    assert reply.auth_mode == rpb.AUTH_MODE_API_KEY
    return grpc.StatusCode.OK


async def _over_tls(
    port: int,
    metadata: tuple[tuple[str, str], ...],
    credentials: grpc.ChannelCredentials,
    *,
    name_override: str | None = None,
) -> grpc.StatusCode:
    options = [("grpc.ssl_target_name_override", name_override)] if name_override else []
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as ch:
        return await _create_integration(ch, metadata)


async def _over_plaintext(port: int, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        return await _create_integration(ch, metadata)


# ---------------------------------------------------------------------------------------------
# server TLS


async def test_tls_client_trusting_the_ca_completes_a_call(
    tls_server: RunningServer, pki: Pki, tenant: Any
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    assert await _over_tls(tls_server.port, tenant.metadata, credentials) == grpc.StatusCode.OK


async def test_tls_dns_san_is_accepted_too(
    tls_server: RunningServer, pki: Pki, tenant: Any
) -> None:
    """Connecting to 127.0.0.1 while verifying the name ``localhost`` (the DNS SAN)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    code = await _over_tls(tls_server.port, tenant.metadata, credentials, name_override="localhost")
    assert code == grpc.StatusCode.OK


async def test_tls_plaintext_client_is_refused(tls_server: RunningServer, tenant: Any) -> None:
    assert await _over_plaintext(tls_server.port, tenant.metadata) == grpc.StatusCode.UNAVAILABLE


async def test_tls_client_trusting_another_ca_refuses_the_server(
    tls_server: RunningServer, pki: Pki, tenant: Any
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.other_ca.cert_pem)
    code = await _over_tls(tls_server.port, tenant.metadata, credentials)
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_tls_wrong_server_name_is_refused(
    tls_server: RunningServer, pki: Pki, tenant: Any
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    code = await _over_tls(
        tls_server.port, tenant.metadata, credentials, name_override="evil.example.com"
    )
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_tls_still_requires_a_secret_key(
    tls_server: RunningServer, pki: Pki, tenant: Any
) -> None:
    """TLS authenticates the server only; the bearer key is still checked."""
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    assert await _over_tls(tls_server.port, (), credentials) == grpc.StatusCode.UNAUTHENTICATED


async def test_tls_health_check_works_over_tls(tls_server: RunningServer, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{tls_server.port}", credentials) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------------------------
# mutual TLS


async def test_tls_mutual_client_without_certificate_is_refused(
    mtls_server: RunningServer, pki: Pki, tenant: Any
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    code = await _over_tls(mtls_server.port, tenant.metadata, credentials)
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_tls_mutual_client_with_ca_signed_certificate_succeeds(
    mtls_server: RunningServer, pki: Pki, tenant: Any
) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=pki.client.key_pem,
        certificate_chain=pki.client.cert_pem,
    )
    assert await _over_tls(mtls_server.port, tenant.metadata, credentials) == grpc.StatusCode.OK


async def test_tls_mutual_client_with_certificate_from_another_ca_is_refused(
    mtls_server: RunningServer, pki: Pki, tenant: Any
) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=pki.other_client.key_pem,
        certificate_chain=pki.other_client.cert_pem,
    )
    code = await _over_tls(mtls_server.port, tenant.metadata, credentials)
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_tls_mutual_self_signed_ca_as_client_certificate_is_refused(
    mtls_server: RunningServer, pki: Pki, tenant: Any
) -> None:
    """Presenting the *other* CA's own self-signed certificate as a client certificate."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=pki.other_ca.key_pem,
        certificate_chain=pki.other_ca.cert_pem,
    )
    code = await _over_tls(mtls_server.port, tenant.metadata, credentials)
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_tls_mutual_plaintext_client_is_refused(
    mtls_server: RunningServer, tenant: Any
) -> None:
    assert await _over_plaintext(mtls_server.port, tenant.metadata) == grpc.StatusCode.UNAVAILABLE


async def test_tls_mutual_client_certificate_does_not_replace_the_secret_key(
    mtls_server: RunningServer, pki: Pki
) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem,
        private_key=pki.client.key_pem,
        certificate_chain=pki.client.cert_pem,
    )
    code = await _over_tls(mtls_server.port, (), credentials)
    assert code == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------------------------------------
# settings validation


def test_tls_cert_without_key_is_a_validation_error(
    pki: Pki, settings_factory: Callable[..., Settings]
) -> None:
    with pytest.raises(pydantic.ValidationError):
        settings_factory(tls_cert=pki.server.cert_path)


def test_tls_key_without_cert_is_a_validation_error(
    pki: Pki, settings_factory: Callable[..., Settings]
) -> None:
    with pytest.raises(pydantic.ValidationError):
        settings_factory(tls_key=pki.server.key_path)


def test_tls_client_ca_without_server_cert_is_a_validation_error(
    pki: Pki, settings_factory: Callable[..., Settings]
) -> None:
    """Requiring client certificates on a plaintext port would silently not happen."""
    with pytest.raises(pydantic.ValidationError):
        settings_factory(tls_client_ca=pki.ca.cert_path)


def test_tls_complete_settings_are_accepted(
    pki: Pki, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(
        tls_cert=pki.server.cert_path,
        tls_key=pki.server.key_path,
        tls_client_ca=pki.ca.cert_path,
    )
    assert settings.tls_cert == pki.server.cert_path
    assert settings.tls_client_ca == pki.ca.cert_path


# ---------------------------------------------------------------------------------------------
# the HTTP listener: the same TLS settings apply


def _https(pki: Pki, *, client: Issued | None = None, ca: Issued | None = None) -> Any:
    import ssl

    context = ssl.create_default_context(cafile=str((ca or pki.ca).cert_path))
    if client is not None:
        context.load_cert_chain(str(client.cert_path), str(client.key_path))
    return context


async def test_http_listener_serves_tls_with_the_same_certificate(
    tls_server: RunningServer, pki: Pki
) -> None:
    import httpx

    assert tls_server.public_url == f"https://127.0.0.1:{tls_server.http_port}"
    async with httpx.AsyncClient(verify=_https(pki)) as client:
        response = await client.get(f"{tls_server.public_url}/healthz")
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"


async def test_http_listener_refuses_plaintext_and_foreign_cas(
    tls_server: RunningServer, pki: Pki
) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"http://127.0.0.1:{tls_server.http_port}/healthz")
    async with httpx.AsyncClient(verify=_https(pki, ca=pki.other_ca)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{tls_server.public_url}/healthz")


async def test_http_listener_mutual_tls(mtls_server: RunningServer, pki: Pki) -> None:
    import httpx

    url = f"https://127.0.0.1:{mtls_server.http_port}/healthz"
    async with httpx.AsyncClient(verify=_https(pki, client=pki.client)) as client:
        assert (await client.get(url)).status_code == 200
    for refused in (None, pki.other_client):
        async with httpx.AsyncClient(verify=_https(pki, client=refused)) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(url)
