"""Settings, loaded and validated in one place: environment variables ``CREDBROKER_*``, with CLI
flags overriding them. Secrets (the keyring) are ``SecretStr`` so they never print."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from credbroker.domain.connect_sessions import normalize_origin
from credbroker.outbound import parse_networks


def tls_pairing_problem(
    cert: object, key: object, client_ca: object, names: Mapping[str, str] | None = None
) -> str | None:
    """What is wrong with this combination of TLS settings, naming each as the user gave it
    (``names`` maps fields given as flags to the flag); None when it is fine."""
    cert_name, key_name, ca_name = (
        (names or {}).get(field) or "CREDBROKER_" + field.upper()
        for field in ("tls_cert", "tls_key", "tls_client_ca")
    )
    if cert is not None and key is None:
        return f"{cert_name} needs {key_name} too (the certificate's private key)"
    if key is not None and cert is None:
        return f"{key_name} needs {cert_name} too (the certificate chain)"
    if client_ca is not None and cert is None:
        return f"{ca_name} needs {cert_name} and {key_name} (mutual TLS is on top of TLS)"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CREDBROKER_", extra="ignore")

    listen: str = Field("127.0.0.1:50051", description="host:port the gRPC server binds")
    http_listen: str = Field(
        "127.0.0.1:8080", description="host:port the HTTP server binds; empty turns it off"
    )
    public_url: str | None = Field(
        None,
        description="base URL of the HTTP server in links handed out (default: from http_listen)",
    )
    database_url: SecretStr | None = Field(None, description="PostgreSQL DSN (postgresql://...)")
    keyring: SecretStr | None = Field(None, description="master keyring JSON")
    keyring_file: Path | None = Field(None, description="path to a file holding the keyring JSON")
    data_dir: Path = Field(Path(".credbroker"), description="dev mode: embedded database and keys")
    log_format: str = Field("auto", description="json, console, or auto (console on a terminal)")
    log_level: str = Field("info", description="debug, info, warning or error")
    reflection: bool = Field(True, description="serve gRPC server reflection")
    connect_allowed_origins: str = Field(
        "",
        description="comma-separated origins that may use every connect session "
        "and embed the connect page (https://app.example.com)",
    )
    connect_max_attempts: int = Field(
        5, ge=1, le=100, description="failed submissions a connect session admits"
    )
    db_pool_min: int = Field(2, ge=0, le=100)
    db_pool_max: int = Field(10, ge=1, le=500)
    db_acquire_timeout: float = Field(
        2.0, gt=0, le=60, description="seconds to wait for a pool connection"
    )
    db_statement_timeout: float = Field(5.0, gt=0, le=600, description="seconds per SQL statement")
    rpc_timeout: float = Field(
        10.0, gt=0, le=600, description="server-side deadline per RPC, seconds"
    )
    max_concurrent_rpcs: int = Field(
        256, ge=1, description="authenticated calls served at once; beyond, RESOURCE_EXHAUSTED"
    )
    max_open_rpcs: int = Field(
        4096,
        ge=1,
        description="gRPC's own cap on calls open at once, counted before authentication "
        "(a memory backstop, keep it well above the other limits)",
    )
    first_message_timeout: float = Field(
        5.0, gt=0, le=600, description="seconds a call may take to send its request message"
    )
    max_unauthenticated_per_peer: int = Field(
        16, ge=1, description="health calls (no key) in flight per client address"
    )
    max_watch_streams: int = Field(256, ge=1, description="Health/Watch streams open at once")
    max_watch_streams_per_peer: int = Field(
        16, ge=1, description="Health/Watch streams open at once per client address"
    )
    auth_failures_per_second: float = Field(
        20.0, gt=0, description="failed authentications refilled per second, per client address"
    )
    auth_failure_burst: float = Field(
        200.0, ge=1, description="failed authentications a client address may make in a burst"
    )
    watch_max_age: float = Field(
        600.0,
        gt=0,
        description="seconds after which a stream (Health/Watch, WatchConnections, reflection) "
        "ends (OK)",
    )
    max_message_bytes: int = Field(256 * 1024, ge=1024, description="largest request accepted")
    shutdown_grace: float = Field(5.0, ge=0, description="seconds in-flight RPCs get on shutdown")
    verify_credentials: bool = Field(
        True, description="check credentials with the provider before storing them"
    )
    outbound_allow: str = Field(
        "", description="CIDRs verification may reach although private/loopback (e.g. 10.0.0.0/8)"
    )
    verify_timeout: float = Field(5.0, gt=0, le=60, description="seconds per verification request")
    recheck_interval: float = Field(
        600.0, ge=0, description="seconds between background re-checks; 0 turns them off"
    )
    recheck_max_age: float = Field(
        86400.0, gt=0, description="re-check connections not verified for this many seconds"
    )
    recheck_batch: int = Field(100, ge=1, le=10000, description="connections per re-check run")
    workers: int | None = Field(
        None, ge=1, le=64, description="server processes sharing the port; default: CPU count"
    )
    metrics_listen: str | None = Field(None, description="HOST:PORT of the Prometheus endpoint")
    reuse_port: bool = Field(
        False, description="bind with SO_REUSEPORT (set for each process of serve --workers)"
    )
    accept_binding_v1: bool = Field(
        False,
        description="read blobs of the legacy binding (format 1, written before binding v2) "
        "until `keyring rewrap` moves them; off, they are refused and servers do not start "
        "while any is stored",
    )
    cache_ttl: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="seconds a cached key or connection ciphertext may live; 0 turns caches off",
    )
    cache_size: int = Field(10000, ge=1, description="entries per cache")
    audit_batches_in_flight: int = Field(
        1,
        ge=1,
        le=16,
        description="audit batches written at once (group commit); more lowers the wait for a "
        "commit under light load, at the cost of smaller batches (more statements) under load",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve TLS")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: require client certs (mTLS)"
    )
    event_retention: float = Field(
        604800.0, gt=0, description="seconds connection events (and their deliveries) are kept"
    )
    event_cleanup_interval: float = Field(
        3600.0, ge=0, description="seconds between deletions of expired events; 0 turns them off"
    )
    watch_heartbeat: float = Field(
        15.0, gt=0, le=3600, description="seconds without an event before Watch sends a heartbeat"
    )
    watch_streams_per_key: int = Field(8, ge=1, le=1000, description="open Watch streams per key")
    watch_max_streams: int = Field(64, ge=1, le=10000, description="open Watch streams per server")
    watch_streams_per_peer: int = Field(
        16,
        ge=1,
        le=10000,
        description="open WatchConnections (and reflection) streams per client address, per server",
    )
    webhook_dispatch: bool = Field(True, description="send webhook deliveries from this process")
    webhook_timeout: float = Field(10.0, gt=0, le=60, description="seconds per webhook attempt")
    webhook_retry_base: float = Field(
        5.0, gt=0, le=3600, description="seconds before the first webhook retry (then doubling)"
    )
    webhook_retry_max: float = Field(3600.0, gt=0, description="longest wait between retries")
    webhook_retry_horizon: float = Field(
        86400.0, gt=0, description="seconds after which a failing delivery is given up"
    )
    webhook_circuit_failures: int = Field(
        5, ge=1, le=1000, description="failed attempts in a row that open an endpoint's circuit"
    )
    webhook_circuit_cooldown: float = Field(
        60.0, gt=0, le=86400, description="seconds an endpoint's open circuit stays open"
    )
    webhook_concurrency: int = Field(
        32, ge=1, le=1024, description="attempts in flight per process"
    )
    webhook_endpoint_concurrency: int = Field(
        4, ge=1, le=1024, description="attempts in flight per endpoint, per process"
    )
    outbound_ca_file: Path | None = Field(
        None, description="PEM CA bundle trusted for outbound https instead of the default store"
    )

    @field_validator("outbound_allow")
    @classmethod
    def _check_outbound_allow(cls, value: str) -> str:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _check_event_retention(self) -> Settings:
        # Retention deletes an event's deliveries with it: they must outlive their retries.
        if self.event_retention < self.webhook_retry_horizon:
            raise ValueError(
                "CREDBROKER_EVENT_RETENTION must be at least CREDBROKER_WEBHOOK_RETRY_HORIZON"
            )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        problem = tls_pairing_problem(self.tls_cert, self.tls_key, self.tls_client_ca)
        if problem:
            raise ValueError(problem)
        return self

    @field_validator("connect_allowed_origins")
    @classmethod
    def _check_connect_origins(cls, value: str) -> str:
        for item in (part.strip() for part in value.split(",")):
            if item and normalize_origin(item) is None:
                raise ValueError(f"{item!r} is not an origin like https://app.example.com")
        return value

    def connect_origins(self) -> list[str]:
        """``connect_allowed_origins`` as a list."""
        return [part.strip() for part in self.connect_allowed_origins.split(",") if part.strip()]

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if (
            parts.scheme not in {"http", "https"}
            or not parts.hostname
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ValueError("must be an http(s) URL without query, e.g. https://broker.example")
        return value.rstrip("/")

    @field_validator("listen", "metrics_listen", "http_listen")
    @classmethod
    def _check_listen(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or (value == "" and info.field_name == "http_listen"):
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, for example 127.0.0.1:50051")
        return value

    @field_validator("log_format")
    @classmethod
    def _check_log_format(cls, value: str) -> str:
        if value not in {"json", "console", "auto"}:
            raise ValueError("must be json, console or auto")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be debug, info, warning or error")
        return value.lower()

    def keyring_json(self) -> str | None:
        """The keyring JSON from ``CREDBROKER_KEYRING`` or ``CREDBROKER_KEYRING_FILE``."""
        if self.keyring is not None and self.keyring_file is not None:
            raise ValueError("set CREDBROKER_KEYRING or CREDBROKER_KEYRING_FILE, not both")
        if self.keyring is not None:
            return self.keyring.get_secret_value()
        if self.keyring_file is not None:
            return self.keyring_file.read_text("utf-8")
        return None
