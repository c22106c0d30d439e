"""``tls=``: the client reaches a TLS server with ``grpc.ChannelCredentials`` trusting its
certificate, and fails (UNAVAILABLE, after its retries) when it does not trust it or speaks
plaintext."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import credbroker.app
from credbroker.client import Unavailable
from credbroker.config import Settings

Invoke = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class TlsServer:
    target: str
    certificate: bytes


def _self_signed(folder: Path) -> tuple[Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "credbroker sdk test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, pem


@pytest_asyncio.fixture(scope="module")
async def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
    settings_factory: Callable[..., Settings],
    backend: Any,
    keyring: Any,
) -> AsyncIterator[TlsServer]:
    cert_path, key_path, pem = _self_signed(tmp_path_factory.mktemp("sdk-tls"))
    settings = settings_factory(tls_cert=cert_path, tls_key=key_path)
    running = await credbroker.app.start_server(settings, backend, keyring)
    try:
        yield TlsServer(f"127.0.0.1:{running.port}", pem)
    finally:
        await running.stop(0)


async def test_trusted_certificate(invoke: Invoke, tenant: Any, tls_server: TlsServer) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_server.certificate)
    options = {"tls": credentials}
    created = await invoke(
        tenant.key,
        "create_integration",
        "over-tls",
        "openai",
        target=tls_server.target,
        options=options,
    )
    assert created.integration_id == "over-tls"
    listed = await invoke(
        tenant.key, "list_integrations", target=tls_server.target, options=options
    )
    assert [i.integration_id for i in listed] == ["over-tls"]


@pytest.mark.parametrize("tls", [True, False])
async def test_untrusted_or_plaintext_fails(
    invoke: Invoke, tenant: Any, tls_server: TlsServer, tls: bool, waits: list[float]
) -> None:
    with pytest.raises(Unavailable):
        await invoke(
            tenant.key,
            "list_integrations",
            target=tls_server.target,
            options={"tls": tls, "retries": 1},
            timeout=3,
        )
    assert len(waits) == 1


async def test_tls_client_against_a_plaintext_server(
    invoke: Invoke, tenant: Any, waits: list[float]
) -> None:
    with pytest.raises(Unavailable):
        await invoke(tenant.key, "get_integration", "x", options={"tls": True}, timeout=3)
