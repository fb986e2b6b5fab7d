import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from pydantic import ValidationError

from libs.common.auth import (
    ANONYMOUS,
    Principal,
    Scope,
    StreamTokens,
    generate_api_key,
    hash_api_key,
    parse_api_key,
)
from libs.common.domain import artifact_key, check_tenant, object_prefix
from libs.common.errors import UnauthorizedError
from libs.common.ratelimit import gcra_decision
from libs.common.settings import AuthSettings

SECRET = "s" * 32


def test_generated_key_has_our_format_and_its_hash_is_the_sha256() -> None:
    new = generate_api_key()
    assert new.key.startswith(f"opa_{new.prefix}_")
    assert parse_api_key(new.key) == new.prefix
    assert new.key_hash == hash_api_key(new.key)
    assert len(new.key_hash) == 64
    assert new.key not in new.key_hash


def test_generated_keys_differ() -> None:
    keys = {generate_api_key().key for _ in range(100)}
    assert len(keys) == 100


@pytest.mark.parametrize("value", ["", "opa_", "opa_abc_def", "xyz_12345678_" + "a" * 43, "opa_1234567_" + "a" * 43])
def test_parse_refuses_what_is_not_a_key(value: str) -> None:
    assert parse_api_key(value) is None


def test_stream_token_verifies_for_its_object() -> None:
    tokens = StreamTokens(SECRET, 60)
    object_id = uuid.uuid4()
    token, expires = tokens.sign(object_id, "acme", "key:1", "1")
    claims = tokens.verify(token, object_id)
    assert (claims.tenant, claims.identity, claims.key_id) == ("acme", "key:1", "1")
    assert expires > datetime.now(UTC)


def test_stream_token_refused_for_another_object() -> None:
    tokens = StreamTokens(SECRET, 60)
    token, _ = tokens.sign(uuid.uuid4(), "acme", None, None)
    with pytest.raises(UnauthorizedError, match="another object"):
        tokens.verify(token, uuid.uuid4())


def test_stream_token_refused_once_expired() -> None:
    tokens = StreamTokens(SECRET, 5)
    object_id = uuid.uuid4()
    token, _ = tokens.sign(object_id, "acme", None, None, now=datetime.now(UTC) - timedelta(seconds=6))
    with pytest.raises(UnauthorizedError, match="expired"):
        tokens.verify(token, object_id)


def test_stream_token_valid_just_before_expiry() -> None:
    tokens = StreamTokens(SECRET, 5)
    object_id = uuid.uuid4()
    token, _ = tokens.sign(object_id, "acme", None, None, now=datetime.now(UTC) - timedelta(seconds=4))
    assert tokens.verify(token, object_id).tenant == "acme"


def test_stream_token_signed_with_another_secret_is_refused() -> None:
    object_id = uuid.uuid4()
    token, _ = StreamTokens("x" * 32, 60).sign(object_id, "acme", None, None)
    with pytest.raises(UnauthorizedError, match="not valid"):
        StreamTokens(SECRET, 60).verify(token, object_id)


def test_stream_token_with_alg_none_is_refused() -> None:
    object_id = uuid.uuid4()
    forged = jwt.encode(
        {"sub": str(object_id), "aud": "opa:stream", "tenant": "acme", "exp": int(time.time()) + 60},
        key="",
        algorithm="none",
    )
    with pytest.raises(UnauthorizedError):
        StreamTokens(SECRET, 60).verify(forged, object_id)


def test_admin_implies_every_scope_and_others_only_their_own() -> None:
    admin = Principal("acme", frozenset({Scope.ADMIN}))
    reader = Principal("acme", frozenset({Scope.READ}))
    assert all(admin.allows(scope) for scope in Scope)
    assert reader.allows(Scope.READ)
    assert not reader.allows(Scope.SUBMIT)
    assert not reader.allows(Scope.ADMIN)
    assert ANONYMOUS.tenant == "default"


def test_default_tenant_keeps_the_seed_layout_and_others_get_their_own_prefix() -> None:
    assert artifact_key("object-123", "validate") == "object-123/validate_result.json"
    assert artifact_key("object-123", "validate", "acme") == "tenants/acme/object-123/validate_result.json"
    assert object_prefix("x", "default") == "x"


@pytest.mark.parametrize("value", ["", "Acme", "-acme", "a" * 64, "ac/me", "ac_me"])
def test_tenant_names_are_checked(value: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        check_tenant(value)


def test_auth_on_requires_a_stream_token_secret() -> None:
    with pytest.raises(ValidationError, match="STREAM_TOKEN_SECRET"):
        AuthSettings(auth_enabled=True, stream_token_secret=None)
    with pytest.raises(ValidationError, match="STREAM_TOKEN_SECRET"):
        AuthSettings(auth_enabled=True, stream_token_secret="short")  # type: ignore[arg-type]
    AuthSettings(auth_enabled=False)
    AuthSettings(auth_enabled=True, stream_token_secret=SECRET)  # type: ignore[arg-type]


def test_jwt_settings_refuse_symmetric_algorithms() -> None:
    with pytest.raises(ValidationError, match="public-key"):
        AuthSettings(auth_enabled=False, jwt_algorithms=["HS256"])


def test_gcra_decision_counts_down_and_refuses_past_the_limit() -> None:
    period, limit = 60_000, 5
    interval = period // limit
    first = gcra_decision(1, 0, interval, limit, period)
    assert (first.allowed, first.remaining, first.reset_seconds) == (True, 4, 12)
    fifth = gcra_decision(1, 0, 5 * interval, limit, period)
    assert (fifth.allowed, fifth.remaining, fifth.reset_seconds) == (True, 0, 60)
    sixth = gcra_decision(0, interval, 5 * interval, limit, period)
    assert (sixth.allowed, sixth.remaining, sixth.retry_after_seconds) == (False, 0, 12)
    assert sixth.headers()["Retry-After"] == "12"
    assert set(sixth.headers()) == {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After"}
