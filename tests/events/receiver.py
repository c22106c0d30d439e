"""A real HTTPS webhook receiver on 127.0.0.1 with a throwaway CA of its own (the server trusts
it through ``CREDBROKER_OUTBOUND_CA_FILE``): records every request with its raw body and
headers, and can answer with an error, slowly, or not at all (stopped: connection refused)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_pki(folder: Path) -> Pki:
    """A CA and a server certificate for IP 127.0.0.1 (and localhost) signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "credbroker test receiver CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
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
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
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
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "receiver.pem", folder / "receiver.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


@dataclass(frozen=True)
class Received:
    time: float
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return str(self.json["event_id"])


# (path, parsed body) -> (status, seconds to wait before answering)
Behaviour = Callable[[str, Any], tuple[int, float]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that gave up (timeouts, killed servers) leave broken pipes: not interesting."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if len(body) < length:
            # The sender died mid-body (kill -9): a real receiver drops the request, and the
            # sender's retry delivers the event whole.
            self.close_connection = True
            return
        self.server.receiver.handle(self, body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Receiver:
    """Serves https://127.0.0.1:<port>/<any path>; ``stop`` and ``start`` keep the port."""

    def __init__(self, pki: Pki) -> None:
        self._pki = pki
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._behaviour: Behaviour = lambda path, body: (200, 0.0)
        self._release = threading.Event()
        self.arrivals = 0  # requests that arrived, answered or not yet
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hook") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.receiver = self
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._pki.cert_file, self._pki.key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._release = threading.Event()

    def behave(self, behaviour: Behaviour) -> None:
        with self._lock:
            self._behaviour = behaviour

    def release(self) -> None:
        """Wakes requests held by a long delay."""
        self._release.set()

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def handle(self, request: _Handler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        with self._lock:
            behaviour, release = self._behaviour, self._release
            self.arrivals += 1
        status, delay = behaviour(request.path, parsed)
        arrived = time.time()
        if delay:
            release.wait(delay)
        with self._lock:
            self._received.append(Received(arrived, request.path, headers, body, status))
        reply = b'{"ok": true}'
        request.send_response(status)
        request.send_header("content-type", "application/json")
        request.send_header("content-length", str(len(reply)))
        request.end_headers()
        request.wfile.write(reply)
