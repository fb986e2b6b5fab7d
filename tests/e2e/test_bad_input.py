"""Bad input gets a clear 4xx problem document, never a 5xx."""

from typing import Any

import httpx
import pytest

from deploy.local.stack import Stack
from tests.e2e.client import unique

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def _body(**changes: Any) -> dict[str, Any]:
    return {"identifier": unique("bad"), "operations": ["validate"], **changes}


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("not an object", ["validate"], 422, "body"),
    ("missing identifier", {"operations": ["validate"]}, 422, "identifier"),
    ("missing operations", {"identifier": "x1"}, 422, "operations"),
    ("unknown operation", _body(operations=["validate", "compress"]), 422, "operations"),
    ("empty operations", _body(operations=[]), 422, "operations"),
    ("duplicate operations", _body(operations=["validate", "validate"]), 422, "repeated: validate"),
    ("operations not a list", _body(operations="validate"), 422, "operations"),
    ("identifier too long", _body(identifier="a" * 256), 422, "identifier"),
    ("identifier with a slash", _body(identifier="a/b"), 422, "identifier"),
    ("identifier with dot-dot", _body(identifier="a..b"), 422, "'..'"),
    ("identifier starting with a dot", _body(identifier=".hidden"), 422, "identifier"),
    ("identifier with a control character", _body(identifier="a\u0001b"), 422, "identifier"),
    ("identifier with a space", _body(identifier="a b"), 422, "identifier"),
    ("empty identifier", _body(identifier=""), 422, "identifier"),
    ("identifier not a string", _body(identifier=123), 422, "identifier"),
    ("unknown field", _body(priority_boost=True), 422, "priority_boost"),
    ("payload and source", _body(payload={"a": 1}, source="s3://b/k.json"), 422, "not both"),
    ("source not s3", _body(source="http://example.com/x.json"), 422, "s3://"),
    ("format without source", _body(format="csv"), 422, "source"),
    ("options for an absent operation", _body(options={"export": {"format": "csv"}}), 422, "not in `operations`"),
    ("unknown option", _body(options={"validate": {"strict": True}}), 422, "validate"),
    ("invalid JSON Schema", _body(options={"validate": {"schema": {"type": "nonsense"}}}), 422, "JSON Schema"),
    # PostgreSQL stores no NUL character in text or jsonb: refused up front, not a 503 once the insert fails.
    ("NUL in a payload string", _body(payload={"note": "a\u0000b"}), 422, "NUL"),
    ("NUL in a metadata key", _body(metadata={"k\u0000": 1}), 422, "NUL"),
    ("NUL in source", _body(source="s3://bucket/a\u0000.json"), 422, "NUL"),
    ("NUL in an option", _body(options={"validate": {"schema": {"title": "\u0000"}}}), 422, "NUL"),
    (
        "invalid filter expression",
        _body(operations=["transform"], options={"transform": {"steps": [{"op": "filter", "expression": "a[?"}]}}),
        422,
        "JMESPath",
    ),
]


def _assert_problem(response: httpx.Response, status: int, mentions: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert mentions in problem["detail"], problem


@pytest.mark.parametrize(("case", "body", "status", "mentions"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_submission_is_refused_with_a_clear_problem(
    api: httpx.AsyncClient, case: str, body: Any, status: int, mentions: str
) -> None:
    _assert_problem(await api.post("/api/v1/process", json=body), status, mentions)


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b'{"identifier": "x", "operations": ["validate"]'])
async def test_malformed_json_is_400(api: httpx.AsyncClient, raw: bytes) -> None:
    response = await api.post("/api/v1/process", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_payload_over_the_limit_is_413_pointing_to_source(api: httpx.AsyncClient) -> None:
    big = [{"text": "x" * 1000} for _ in range(1100)]
    _assert_problem(await api.post("/api/v1/process", json=_body(payload=big)), 413, "source")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", f"/api/v1/progress/{UNKNOWN_ID}", 404),
        ("GET", "/api/v1/progress/not-a-uuid", 422),
        ("GET", "/api/v1/progress/not-a-uuid/stream", 422),
        ("POST", f"/api/v1/objects/{UNKNOWN_ID}/cancel", 404),
        ("POST", "/api/v1/objects/123/cancel", 422),
        ("POST", f"/api/v1/objects/{UNKNOWN_ID}/retry", 404),
        ("POST", "/api/v1/objects/zzz/retry", 422),
        ("GET", "/api/v1/objects/no-such-object-anywhere", 404),
        ("GET", "/api/v1/objects/a..b", 422),
        ("GET", "/api/v1/nothing-here", 404),
        ("DELETE", "/api/v1/process", 405),
    ],
)
async def test_unknown_and_malformed_ids_are_4xx(api: httpx.AsyncClient, method: str, path: str, status: int) -> None:
    response = await api.request(method, path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"]


# Latin-1 bytes as a header's text: 'été', and '²' (a digit to str.isdigit, not to int).
@pytest.mark.parametrize("value", [b"\xe9t\xe9", b"\xb2"], ids=["accents", "superscript"])
async def test_a_stream_header_that_is_no_event_id_is_forwarded_not_a_500(api: httpx.AsyncClient, value: bytes) -> None:
    response = await api.get(f"/api/v1/progress/{UNKNOWN_ID}/stream", headers={b"Last-Event-ID": value})
    assert response.status_code == 404, response.text  # it reached the progress service: the object does not exist
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_unpaired_surrogate_is_refused(api: httpx.AsyncClient) -> None:
    # Valid to Python's JSON parser, but no UTF-8: the command carrying it could not be encoded (a 503, every time).
    body = b'{"identifier": "%s", "operations": ["validate"], "payload": {"text": "\\ud800"}}' % unique("bad").encode()
    response = await api.post("/api/v1/process", content=body, headers={"content-type": "application/json"})
    _assert_problem(response, 422, "surrogate")


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/v1/progress/not-a-uuid/stream", 422), ("/api/v1/nowhere", 404)],
    ids=["malformed id", "no such route"],
)
async def test_the_progress_service_answers_problems_too(stack: Stack, path: str, status: int) -> None:
    # nginx (docker-compose) sends the SSE streams straight to the progress service, not through the gateway.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.settings.progress_port}", timeout=30) as direct:
        response = await direct.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"]
