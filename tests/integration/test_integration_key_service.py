"""KeyService against the real database: environments, keys and authentication."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from credbroker.domain import secret_keys
from credbroker.domain.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from credbroker.domain.keys import KeyService
from credbroker.domain.models import ALL_SCOPES, Principal, Scope


def _name() -> str:
    return f"ks-{uuid.uuid4().hex[:12]}"


def _with_secret(token: str, secret: str) -> str:
    """The same key id with another secret and a correct checksum."""
    body = token[: len(secret_keys.PREFIX) + secret_keys.KEY_ID_LENGTH + 1] + secret
    return body + secret_keys.checksum(body)


async def test_authenticate_good_key(keys: KeyService) -> None:
    name = _name()
    environment = await keys.create_environment(name)
    scopes = frozenset({Scope.CONNECTIONS_READ})
    token, record = await keys.create_key(name, scopes, description="reader")
    principal = await keys.authenticate(token)
    assert principal == Principal(record.key_id, environment.id, name, scopes)
    assert record.environment_id == environment.id


async def test_authenticate_all_scopes_and_future_expiry(keys: KeyService) -> None:
    name = _name()
    await keys.create_environment(name)
    token, _ = await keys.create_key(name, expire_time=datetime.now(UTC) + timedelta(hours=1))
    principal = await keys.authenticate(token)
    assert principal is not None
    assert principal.scopes == ALL_SCOPES


async def test_authenticate_unknown_key_id(keys: KeyService) -> None:
    token, _ = secret_keys.generate_key()
    assert secret_keys.parse_key(token) is not None
    assert await keys.authenticate(token) is None


async def test_authenticate_wrong_secret(keys: KeyService) -> None:
    name = _name()
    await keys.create_environment(name)
    token, _ = await keys.create_key(name)
    _, other = secret_keys.generate_key()
    forged = _with_secret(token, other.secret)
    parsed = secret_keys.parse_key(forged)
    assert parsed is not None and parsed.key_id == token[5:21]
    assert await keys.authenticate(forged) is None
    assert await keys.authenticate(token) is not None


async def test_authenticate_malformed(keys: KeyService) -> None:
    name = _name()
    await keys.create_environment(name)
    token, _ = await keys.create_key(name)
    for bad in [
        "",
        token[:-1],
        token + "x",
        token.upper(),
        token[:-1] + ("a" if token[-1] != "a" else "b"),
    ]:
        assert await keys.authenticate(bad) is None


async def test_authenticate_revoked(keys: KeyService) -> None:
    name = _name()
    await keys.create_environment(name)
    token, record = await keys.create_key(name)
    kept, _ = await keys.create_key(name)
    assert await keys.authenticate(token) is not None
    await keys.revoke_key(record.key_id)
    assert await keys.authenticate(token) is None
    assert await keys.authenticate(kept) is not None
    listed = {k.key_id: k for k in await keys.list_keys(name)}
    assert listed[record.key_id].revoke_time is not None


async def test_authenticate_expired(keys: KeyService) -> None:
    name = _name()
    await keys.create_environment(name)
    token, _ = await keys.create_key(name, expire_time=datetime.now(UTC) - timedelta(seconds=1))
    assert await keys.authenticate(token) is None


async def test_revoke_unknown_or_malformed_key(keys: KeyService) -> None:
    with pytest.raises(NotFoundError) as caught:
        await keys.revoke_key("0" * 16)
    assert caught.value.reason == "KEY_NOT_FOUND"
    for bad in ["", "short", "x" * 17, "' OR 1=1 --....", "é" * 16]:
        with pytest.raises(NotFoundError):
            await keys.revoke_key(bad)


async def test_environment_rules(keys: KeyService) -> None:
    name = _name()
    created = await keys.create_environment(name)
    assert (await keys.environment(name)).id == created.id
    assert name in [e.name for e in await keys.list_environments()]
    with pytest.raises(AlreadyExistsError):
        await keys.create_environment(name)
    with pytest.raises(InvalidArgumentError):
        await keys.create_environment("Bad_Name")
    with pytest.raises(NotFoundError) as caught:
        await keys.environment(_name())
    assert caught.value.reason == "ENVIRONMENT_NOT_FOUND"


async def test_create_key_unknown_environment(keys: KeyService) -> None:
    with pytest.raises(NotFoundError):
        await keys.create_key(_name())
    with pytest.raises(NotFoundError):
        await keys.list_keys(_name())


async def test_keys_listed_per_environment_without_secrets(keys: KeyService) -> None:
    a, b = _name(), _name()
    await keys.create_environment(a)
    await keys.create_environment(b)
    token_a, record_a = await keys.create_key(a, description="first")
    _, record_b = await keys.create_key(b)
    listed = await keys.list_keys(a)
    assert [k.key_id for k in listed] == [record_a.key_id]
    assert record_b.key_id not in [k.key_id for k in listed]
    assert token_a not in repr(listed)
    parsed = secret_keys.parse_key(token_a)
    assert parsed is not None
    assert parsed.secret not in repr(listed)
    assert listed[0].secret_hash == secret_keys.hash_secret(parsed)
