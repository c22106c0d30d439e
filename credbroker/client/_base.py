"""What the sync and async clients share: argument checks, call metadata, channel options."""

from __future__ import annotations

from typing import Protocol

import grpc

from credbroker.client._retry import Backoff

USER_AGENT = "credbroker-python"
CHANNEL_OPTIONS: list[tuple[str, str | int]] = [("grpc.primary_user_agent", USER_AGENT)]


class PageRequest(Protocol):
    page_token: str


class PageResponse(Protocol):
    @property
    def next_page_token(self) -> str: ...


class Settings:
    """The validated constructor arguments of a client. Never shows the secret key."""

    def __init__(
        self,
        target: str,
        secret_key: str,
        *,
        tls: bool | grpc.ChannelCredentials,
        timeout: float | None,
        retries: int,
    ) -> None:
        key = secret_key.strip()
        if not key or any(c.isspace() or not c.isprintable() for c in key):
            raise ValueError("secret_key must be a non-empty key without spaces (cbsk_...)")
        if not target:
            raise ValueError("target must be host:port, e.g. localhost:50051")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (or None for no deadline)")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.target = target
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {key}"),)
        self.credentials: grpc.ChannelCredentials | None
        if tls is True:
            self.credentials = grpc.ssl_channel_credentials()
        elif tls is False:
            self.credentials = None
        else:
            self.credentials = tls
        self.timeout = timeout
        self.backoff = Backoff(retries=retries)

    def call_timeout(self, timeout: float | None) -> float | None:
        """The deadline of one call: the per-call ``timeout`` if given, else the client's."""
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        return self.timeout if timeout is None else timeout

    def describe(self, cls: str) -> str:
        return f"{cls}(target={self.target!r}, tls={self.credentials is not None})"
