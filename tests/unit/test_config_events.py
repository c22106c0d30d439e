"""Event and webhook settings: retention must outlive the webhook retry horizon."""

from __future__ import annotations

import pydantic
import pytest

from credbroker.config import Settings


def test_retention_shorter_than_the_retry_horizon_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="CREDBROKER_EVENT_RETENTION"):
        Settings(event_retention=3600, webhook_retry_horizon=7200)
    settings = Settings(event_retention=7200, webhook_retry_horizon=7200)
    assert settings.event_retention == settings.webhook_retry_horizon


def test_defaults() -> None:
    settings = Settings()
    assert (settings.event_retention, settings.webhook_retry_horizon) == (604800.0, 86400.0)
    assert settings.webhook_dispatch and settings.watch_heartbeat == 15.0
