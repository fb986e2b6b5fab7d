"""Security end to end: authentication, scopes, tenants, stream tokens, rate limits and the stream cap, on stacks
with authentication on (the other end-to-end tests run with it off, as `make run` does)."""

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from deploy.local.stack import Stack
from tests.conftest import ROOT
from tests.e2e.client import read_sse, unique, wait_for
from tests.e2e.s3 import s3

ISSUER = "https://issuer.test"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
STREAM_TTL = 3

# Every route but /health, /docs and /openapi.json, with a body that would be valid.
SOME_ID = str(uuid.uuid4())
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/v1/process", {"identifier": "x-1", "operations": ["validate"]}),
    ("GET", f"/api/v1/progress/{SOME_ID}", None),
    ("GET", f"/api/v1/progress/{SOME_ID}/stream", None),
    ("GET", "/api/v1/status", None),
    ("GET", "/api/v1/objects", None),
    ("GET", "/api/v1/objects/x-1", None),
    ("POST", f"/api/v1/objects/{SOME_ID}/cancel", None),
    ("POST", f"/api/v1/objects/{SOME_ID}/retry", None),
    ("POST", "/api/v1/objects/retry", {"all_failed": True}),
    ("POST", f"/api/v1/objects/{SOME_ID}/stream-token", None),
    ("POST", "/api/v1/keys", {"scopes": ["read"]}),
    ("GET", "/api/v1/keys", None),
    ("DELETE", f"/api/v1/keys/{SOME_ID}", None),
]
SUBMIT_ROUTES = {"/api/v1/process", "/cancel", "/retry"}


def needed_scope(method: str, path: str) -> str:
    if path.startswith("/api/v1/keys"):
        return "admin"
    if method == "POST" and not path.endswith("/stream-token"):
        return "submit"
    return "read"


def create_key(stack: Stack, tenant: str, scopes: str) -> str:
    """The management command, as an operator runs it: the key is the `key:` line of its output."""
    result = subprocess.run(
        [sys.executable, "-m", "services.gateway.keys", "create", "--tenant", tenant, "--scopes", scopes],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": stack.settings.database_url},
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("key:")]
    assert len(lines) == 1, result.stdout
    assert "opa_" not in result.stderr
    return lines[0].split()[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def id_token(tenant: str, scope: str, **overrides: Any) -> str:
    claims: dict[str, Any] = {"iss": ISSUER, "sub": f"user-{uuid.uuid4().hex[:6]}", "tenant": tenant, "scope": scope}
    claims["exp"] = int(time.time()) + 300
    claims.update(overrides)
    return jwt.encode(claims, RSA_KEY, algorithm="RS256")


@pytest.fixture(scope="module")
def secure(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory(
        "secure",
        auth=True,
        rate_limit_per_minute=10_000,
        rate_limit_anonymous_per_minute=10_000,
        stream_token_ttl_seconds=STREAM_TTL,
        jwt_issuer=ISSUER,
        jwt_public_key=PUBLIC_PEM,
    )


@pytest.fixture(scope="module")
def keys(secure: Stack) -> dict[str, str]:
    return {
        "acme_admin": create_key(secure, "acme", "admin"),
        "acme_submit": create_key(secure, "acme", "submit"),
        "acme_read": create_key(secure, "acme", "read"),
        "beta": create_key(secure, "beta", "submit,read"),
        "default": create_key(secure, "default", "submit,read"),
    }


@pytest.fixture
async def client(secure: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secure.base_url, timeout=30) as api:
        yield api


async def submit_as(client: httpx.AsyncClient, key: str, **body: Any) -> dict[str, Any]:
    body = {"identifier": unique("sec"), "operations": ["validate"], **body}
    response = await client.post("/api/v1/process", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["detail"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    return body


# --- authentication and scopes --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_every_endpoint_refuses_a_request_without_credentials(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    assert_problem(await client.request(method, path, json=body), 401)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer opa_00000000_" + "A" * 43},
        {"X-API-Key": "opa_00000000_" + "A" * 43},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["unknown bearer key", "unknown X-API-Key", "garbage", "basic"],
)
async def test_every_endpoint_refuses_a_wrong_key(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> None:
    assert_problem(await client.request(method, path, json=body, headers=headers), 401)


async def test_a_real_key_with_a_wrong_secret_is_refused(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    real = keys["acme_read"]
    tampered = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    assert_problem(await client.get("/api/v1/status", headers=bearer(tampered)), 401)
    assert (await client.get("/api/v1/status", headers=bearer(real))).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_every_endpoint_refuses_a_key_without_its_scope(
    client: httpx.AsyncClient, keys: dict[str, str], method: str, path: str, body: dict[str, Any] | None
) -> None:
    wrong = {"admin": "acme_submit", "submit": "acme_read", "read": "acme_submit"}[needed_scope(method, path)]
    assert_problem(await client.request(method, path, json=body, headers=bearer(keys[wrong])), 403)


async def test_public_routes_need_no_key(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/docs", "/openapi.json"):
        assert (await client.get(path)).status_code == 200


async def test_openapi_documents_the_security_schemes(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert {"bearer", "apiKey"} <= set(document["components"]["securitySchemes"])
    assert document["paths"]["/api/v1/process"]["post"]["security"]


async def test_x_api_key_header_works_like_bearer(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    response = await client.get("/api/v1/status", headers={"X-API-Key": keys["acme_read"]})
    assert response.status_code == 200, response.text


# --- tenants --------------------------------------------------------------------------------------------


async def test_another_tenant_s_object_is_not_found_everywhere(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    mine = await submit_as(client, keys["acme_submit"])
    await wait_for_as(client, keys["acme_read"], mine["id"])
    beta = bearer(keys["beta"])
    missing = str(uuid.uuid4())
    for template in (
        "/api/v1/progress/{}",
        "/api/v1/progress/{}/stream",
    ):
        theirs = assert_problem(await client.get(template.format(mine["id"]), headers=beta), 404)
        absent = assert_problem(await client.get(template.format(missing), headers=beta), 404)
        assert theirs["detail"].replace(mine["id"], "X") == absent["detail"].replace(missing, "X")
    for template in ("/api/v1/objects/{}/cancel", "/api/v1/objects/{}/retry", "/api/v1/objects/{}/stream-token"):
        theirs = assert_problem(await client.post(template.format(mine["id"]), headers=beta), 404)
        absent = assert_problem(await client.post(template.format(missing), headers=beta), 404)
        assert theirs["detail"].replace(mine["id"], "X") == absent["detail"].replace(missing, "X")
    by_identifier = assert_problem(await client.get(f"/api/v1/objects/{mine['identifier']}", headers=beta), 404)
    assert mine["identifier"] in by_identifier["detail"]
    listing = (await client.get("/api/v1/objects?limit=200", headers=beta)).json()
    assert mine["id"] not in {item["id"] for item in listing["items"]}
    bulk = (await client.post("/api/v1/objects/retry", json={"ids": [mine["id"]]}, headers=beta)).json()
    assert bulk["retried"] == []
    assert bulk["refused"][0]["id"] == mine["id"]
    # The owner still sees it.
    own = (await client.get("/api/v1/objects?limit=200", headers=bearer(keys["acme_read"]))).json()
    assert mine["id"] in {item["id"] for item in own["items"]}


async def test_tenants_have_their_own_identifiers(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    identifier = unique("shared")
    acme = await submit_as(client, keys["acme_submit"], identifier=identifier)
    beta = await submit_as(client, keys["beta"], identifier=identifier)
    assert acme["id"] != beta["id"]
    again = await client.post(
        "/api/v1/process", json={"identifier": identifier, "operations": ["validate"]}, headers=bearer(keys["beta"])
    )
    assert again.status_code == 200
    assert again.json()["id"] == beta["id"]


async def test_a_tenant_s_artifacts_are_under_its_prefix_and_the_default_keeps_the_seed_layout(
    secure: Stack, client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    operations = ["validate", "transform", "export"]
    acme = await submit_as(client, keys["acme_submit"], operations=operations, payload=[{"a": 1}])
    default = await submit_as(client, keys["default"], operations=operations, payload=[{"a": 1}])
    acme_doc = await wait_for_as(client, keys["acme_read"], acme["id"])
    default_doc = await wait_for_as(client, keys["default"], default["id"])
    assert acme_doc["state"] == default_doc["state"] == "completed"
    bucket = secure.settings.s3_bucket
    async with s3(secure.settings.s3_endpoint_url or "", bucket) as client_s3:
        acme_keys = await list_keys(client_s3, bucket, f"tenants/acme/{acme['identifier']}/")
        default_keys = await list_keys(client_s3, bucket, f"{default['identifier']}/")
        stray = await list_keys(client_s3, bucket, f"{acme['identifier']}/")
    assert {f"tenants/acme/{acme['identifier']}/validate_result.json"} <= acme_keys
    assert any(key.endswith("/export.json") for key in acme_keys)
    assert any("transform_output" in key for key in acme_keys)
    assert f"{default['identifier']}/validate_result.json" in default_keys
    assert stray == set()
    assert acme_doc["s3_artifacts"]["validate"].endswith(f"tenants/acme/{acme['identifier']}/validate_result.json")


async def test_the_default_tenant_cannot_take_the_tenants_prefix(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    response = await client.post(
        "/api/v1/process", json={"identifier": "tenants", "operations": ["validate"]}, headers=bearer(keys["default"])
    )
    assert_problem(response, 422)


# --- keys -----------------------------------------------------------------------------------------------


async def test_admin_creates_lists_and_revokes_keys_of_its_tenant(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    admin = bearer(keys["acme_admin"])
    created = await client.post("/api/v1/keys", json={"scopes": ["read"], "name": "dashboard"}, headers=admin)
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["tenant"] == "acme"
    assert new["key"].startswith(f"opa_{new['prefix']}_")
    assert new["last_used_at"] is None
    assert (await client.get("/api/v1/status", headers=bearer(new["key"]))).status_code == 200
    listed = (await client.get("/api/v1/keys", headers=admin)).json()
    assert new["id"] in {k["id"] for k in listed}
    (listed_new,) = [k for k in listed if k["id"] == new["id"]]
    assert listed_new["last_used_at"] is not None, "the request with the key was recorded"
    assert all("key" not in k and k["tenant"] == "acme" for k in listed)
    revoked = await client.delete(f"/api/v1/keys/{new['id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"]
    assert_problem(await client.get("/api/v1/status", headers=bearer(new["key"])), 401)


async def test_admin_cannot_create_or_revoke_keys_of_another_tenant(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    admin = bearer(keys["acme_admin"])
    response = await client.post("/api/v1/keys", json={"tenant": "beta", "scopes": ["read"]}, headers=admin)
    assert_problem(response, 403)
    beta_keys = [k for k in (await client.get("/api/v1/keys", headers=admin)).json() if k["tenant"] == "beta"]
    assert beta_keys == []
    other = await client.post("/api/v1/keys", json={"scopes": ["read"]}, headers=admin)
    assert_problem(await client.delete(f"/api/v1/keys/{uuid.uuid4()}", headers=admin), 404)
    assert other.status_code == 201


async def test_a_revoked_key_stops_working_at_once_with_the_command(secure: Stack, client: httpx.AsyncClient) -> None:
    key = await asyncio.to_thread(create_key, secure, "gamma", "read")
    assert (await client.get("/api/v1/status", headers=bearer(key))).status_code == 200
    prefix = key.split("_")[1]
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.gateway.keys", "revoke", prefix],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": secure.settings.database_url},
        check=True,
        capture_output=True,
    )
    assert_problem(await client.get("/api/v1/status", headers=bearer(key)), 401)
    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.gateway.keys", "list", "--tenant", "gamma"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": secure.settings.database_url},
        check=True,
        capture_output=True,
        text=True,
    )
    (line,) = [line for line in listing.stdout.splitlines() if f"opa_{prefix}_" in line]
    assert "revoked " in line
    assert "used 20" in line, line  # the request it authenticated was recorded


async def test_keys_are_never_logged(secure: Stack, keys: dict[str, str]) -> None:
    log_dir = ROOT / "var" / "test-logs" / "secure"
    text = "".join(path.read_text(errors="replace") for path in log_dir.glob("*.log"))
    for key in keys.values():
        secret = key.split("_", 2)[2]  # the secret itself may contain "_"
        assert secret not in text


# --- JWT ------------------------------------------------------------------------------------------------


async def test_a_jwt_of_the_issuer_is_accepted_with_its_tenant_and_scopes(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    mine = await submit_as(client, keys["acme_submit"])
    reader = bearer(id_token("acme", "read"))
    assert (await client.get(f"/api/v1/progress/{mine['id']}", headers=reader)).status_code == 200
    assert_problem(await client.get(f"/api/v1/progress/{mine['id']}", headers=bearer(id_token("beta", "read"))), 404)
    response = await client.post(f"/api/v1/objects/{mine['id']}/cancel", headers=reader)
    assert_problem(response, 403)
    listed = await client.get("/api/v1/objects", headers=bearer(id_token("acme", "", scopes=["read"])))
    assert listed.status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        id_token("acme", "read", exp=int(time.time()) - 10),
        id_token("acme", "read", iss="https://other.test"),
        id_token("Not A Tenant", "read"),
        jwt.encode({"iss": ISSUER, "sub": "x", "tenant": "acme", "scope": "read", "exp": 2**31}, "k" * 32, "HS256"),
    ],
    ids=["expired", "other issuer", "bad tenant", "symmetric"],
)
async def test_an_invalid_jwt_is_refused(client: httpx.AsyncClient, token: str) -> None:
    assert_problem(await client.get("/api/v1/status", headers=bearer(token)), 401)


# --- stream tokens --------------------------------------------------------------------------------------


async def test_a_stream_token_opens_its_object_s_stream_without_headers(
    secure: Stack, client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    mine = await submit_as(client, keys["acme_submit"])
    answer = await client.post(f"/api/v1/objects/{mine['id']}/stream-token", headers=bearer(keys["acme_read"]))
    assert answer.status_code == 200, answer.text
    url = answer.json()["stream_url"]
    assert url.startswith(f"/api/v1/progress/{mine['id']}/stream?token=")
    for base in (secure.base_url, f"http://127.0.0.1:{secure.settings.progress_port}"):  # gateway and progress
        async with httpx.AsyncClient(base_url=base, timeout=30) as anonymous:
            status, events = await read_sse_url(anonymous, url)
        assert status == 200
        assert events[-1]["state"] == "completed"


async def test_a_stream_token_is_refused_for_another_object(
    secure: Stack, client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    a = await submit_as(client, keys["acme_submit"])
    b = await submit_as(client, keys["acme_submit"])
    token = (await client.post(f"/api/v1/objects/{a['id']}/stream-token", headers=bearer(keys["acme_read"]))).json()[
        "token"
    ]
    for base in (secure.base_url, f"http://127.0.0.1:{secure.settings.progress_port}"):
        async with httpx.AsyncClient(base_url=base, timeout=30) as anonymous:
            response = await anonymous.get(f"/api/v1/progress/{b['id']}/stream", params={"token": token})
        assert_problem(response, 401)


async def test_a_stream_token_expires(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    mine = await submit_as(client, keys["acme_submit"])
    url = (await client.post(f"/api/v1/objects/{mine['id']}/stream-token", headers=bearer(keys["acme_read"]))).json()[
        "stream_url"
    ]
    status, _ = await read_sse_url(client, url)
    assert status == 200
    await asyncio.sleep(STREAM_TTL + 1.5)
    body = assert_problem(await client.get(url), 401)
    assert "expired" in body["detail"]


async def test_a_stream_token_dies_with_its_key(secure: Stack, client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    mine = await submit_as(client, keys["acme_submit"])
    admin = bearer(keys["acme_admin"])
    new = (await client.post("/api/v1/keys", json={"scopes": ["read"]}, headers=admin)).json()
    url = (await client.post(f"/api/v1/objects/{mine['id']}/stream-token", headers=bearer(new["key"]))).json()[
        "stream_url"
    ]
    await client.delete(f"/api/v1/keys/{new['id']}", headers=admin)
    assert_problem(await client.get(url), 401)


async def test_a_stream_token_is_not_a_credential_for_other_routes(
    client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    mine = await submit_as(client, keys["acme_submit"])
    token = (await client.post(f"/api/v1/objects/{mine['id']}/stream-token", headers=bearer(keys["acme_read"]))).json()[
        "token"
    ]
    assert_problem(await client.get(f"/api/v1/progress/{mine['id']}", headers=bearer(token)), 401)
    assert_problem(await client.get(f"/api/v1/progress/{mine['id']}", params={"token": token}), 401)


# --- helpers --------------------------------------------------------------------------------------------


async def wait_for_as(client: httpx.AsyncClient, key: str, object_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30, headers=bearer(key)) as authed:
        return await wait_for(authed, object_id)


async def list_keys(client: Any, bucket: str, prefix: str) -> set[str]:
    response = await client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for item in response.get("Contents", [])}


async def read_sse_url(client: httpx.AsyncClient, url: str) -> tuple[int, list[dict[str, Any]]]:
    """Reads a stream URL as EventSource would: the URL alone, no credentials in headers."""
    parts = urlsplit(url)
    object_id = parts.path.removeprefix("/api/v1/progress/").removesuffix("/stream")
    status, events = await read_sse(client, object_id, params=dict(parse_qsl(parts.query)))
    return status, [event.data for event in events]
