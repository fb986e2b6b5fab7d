"""HTTP routes of SPEC §5: parse, call the service, shape the answer."""

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from libs.common.domain import ObjectState
from libs.common.errors import ForbiddenError
from libs.common.problems import Problem
from libs.common.progress import ProgressDocument
from services.gateway.apikeys import ApiKeyService
from services.gateway.proxy import StreamProxy
from services.gateway.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyResponse,
    BulkRetryRequest,
    BulkRetryResponse,
    CommandResponse,
    Identifier,
    ObjectPage,
    ObjectResponse,
    ProcessRequest,
    ProcessResponse,
    StatusResponse,
    StreamTokenResponse,
)
from services.gateway.security import Admin, Reader, StreamReader, Submitter
from services.gateway.service import GatewayService

router = APIRouter(prefix="/api/v1")


def _problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description, "content": {"application/problem+json": {}}}


INVALID: dict[int | str, dict[str, Any]] = {
    400: _problem("The body is not valid JSON."),
    422: _problem("The request does not match the schema."),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _problem("No such object (or another tenant's: the same answer).")}
AUTH: dict[int | str, dict[str, Any]] = {
    401: _problem("No credentials, or credentials that are not valid; the answer carries `WWW-Authenticate`."),
    403: _problem("The credentials lack the scope this operation needs."),
    429: _problem("Rate limit exceeded; retry after `Retry-After` seconds. See the `RateLimit-*` headers."),
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: _problem("A backing service is unavailable; retry after `Retry-After` seconds.")
}

ObjectId = Annotated[UUID, Path(description="The object's id, as returned by POST /api/v1/process.")]


async def get_service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


async def get_proxy(request: Request) -> StreamProxy:
    proxy: StreamProxy = request.app.state.proxy
    return proxy


async def get_keys(request: Request) -> ApiKeyService:
    keys: ApiKeyService = request.app.state.keys
    return keys


Service = Annotated[GatewayService, Depends(get_service)]
Keys = Annotated[ApiKeyService, Depends(get_keys)]


@router.post(
    "/process",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ProcessResponse,
    responses={
        200: {
            "model": ProcessResponse,
            "description": "The identifier was submitted before: this is that object, unchanged.",
        },
        413: _problem("The inline payload is over the limit; use `source`."),
        **INVALID,
        **AUTH,
        **UNAVAILABLE,
    },
    summary="Submit an object for processing",
)
async def process(
    body: ProcessRequest, request: Request, response: Response, service: Service, principal: Submitter
) -> ProcessResponse:
    """Records the object durably (a 2xx means it will not be lost) and queues it.

    Submitting an identifier again is idempotent: the answer is the existing object (200), and nothing changes.
    The object belongs to the caller's tenant. Scope: `submit`.
    """
    payload_bytes = len(await request.body()) if body.payload is not None else 0
    answer, created = await service.submit(principal.tenant, body, payload_bytes)
    if not created:
        response.status_code = status.HTTP_200_OK
    return answer


@router.get("/progress/{id}", response_model=ProgressDocument, responses={**NOT_FOUND, 422: INVALID[422], **AUTH})
async def progress(id: ObjectId, service: Service, principal: Reader) -> ProgressDocument:
    """Scope: `read`."""
    return await service.progress(principal.tenant, id)


@router.get(
    "/progress/{id}/stream",
    response_class=Response,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "One unnamed SSE event per change; `data:` is the progress document.",
        },
        204: {
            "description": "The object reached a terminal state before the `Last-Event-ID` sent: nothing more will come."
        },
        **NOT_FOUND,
        422: INVALID[422],
        **AUTH,
        **UNAVAILABLE,
    },
    summary="Stream progress as Server-Sent Events",
)
async def progress_stream(
    id: ObjectId, request: Request, proxy: Annotated[StreamProxy, Depends(get_proxy)], principal: StreamReader
) -> Response:
    """Sends the current progress document at once, then one event per change, and ends after a terminal state.

    Each event has an `id:`; a client that reconnects with `Last-Event-ID` resumes without gaps. Scope: `read`,
    or `?token=` from `POST /api/v1/objects/{id}/stream-token` (a browser's EventSource cannot send headers).
    Open streams per key are capped (MAX_STREAMS_PER_KEY): past it, 429.
    """
    del principal  # authenticated and counted here; the progress service checks the object's tenant
    return await proxy.forward(request, f"/api/v1/progress/{id}/stream")


@router.post(
    "/objects/{id}/stream-token",
    response_model=StreamTokenResponse,
    responses={**NOT_FOUND, 422: INVALID[422], **AUTH},
    summary="A short-lived token for the object's SSE stream URL",
)
async def stream_token(id: ObjectId, service: Service, principal: Reader) -> StreamTokenResponse:
    """For a browser: `new EventSource(stream_url)`. The token is signed, valid for STREAM_TOKEN_TTL_SECONDS, for
    this object only, and dies with the key it was made with. Scope: `read`."""
    return await service.stream_token(principal, id)


@router.get("/status", response_model=StatusResponse, responses={**AUTH})
async def system_status(service: Service, principal: Reader) -> StatusResponse:
    """System-wide: the queue and the processing slots are shared by every tenant. Scope: `read`."""
    del principal
    return await service.status()


@router.get("/objects", response_model=ObjectPage, responses={422: INVALID[422], **AUTH, **UNAVAILABLE})
async def list_objects(
    service: Service,
    principal: Reader,
    state: Annotated[
        ObjectState | None, Query(description="Only objects in this state; `failed` lists the dead letters.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
) -> ObjectPage:
    """Objects oldest first, a page at a time. `?state=failed` is the dead-letter queue: retry them one by one
    (`POST /api/v1/objects/{id}/retry`) or in bulk (`POST /api/v1/objects/retry`). Only the caller's tenant's
    objects. Scope: `read`."""
    return await service.list_objects(principal.tenant, state, cursor, limit)


@router.post("/objects/retry", response_model=BulkRetryResponse, responses={**INVALID, **AUTH, **UNAVAILABLE})
async def retry_many(body: BulkRetryRequest, service: Service, principal: Submitter) -> BulkRetryResponse:
    """Re-queue failed objects in bulk: the given `ids`, or every failed object (`all_failed`, up to `limit`).
    Scope: `submit`."""
    return await service.retry_many(principal.tenant, body)


@router.get("/objects/{identifier}", response_model=ObjectResponse, responses={**NOT_FOUND, 422: INVALID[422], **AUTH})
async def object_by_identifier(
    identifier: Annotated[Identifier, Path()], service: Service, principal: Reader
) -> ObjectResponse:
    """Scope: `read`."""
    return await service.object_by_identifier(principal.tenant, identifier)


@router.post(
    "/objects/{id}/cancel",
    response_model=CommandResponse,
    responses={
        202: {"model": CommandResponse, "description": "Processing: cancelled once the running operation ends."},
        409: _problem("The object is in a state that cannot be cancelled."),
        **NOT_FOUND,
        422: INVALID[422],
        **AUTH,
        **UNAVAILABLE,
    },
)
async def cancel(id: ObjectId, service: Service, principal: Submitter) -> JSONResponse:
    """Pending and queued objects are cancelled at once (200); a processing one after its running operation (202).
    Scope: `submit`."""
    answer = await service.cancel(principal.tenant, id)
    code = status.HTTP_200_OK if answer.state == "cancelled" else status.HTTP_202_ACCEPTED
    return JSONResponse(answer.model_dump(mode="json"), status_code=code)


@router.post(
    "/objects/{id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CommandResponse,
    responses={
        409: _problem("Only failed objects can be retried."),
        **NOT_FOUND,
        422: INVALID[422],
        **AUTH,
        **UNAVAILABLE,
    },
)
async def retry(id: ObjectId, service: Service, principal: Submitter) -> CommandResponse:
    """Puts a failed object back in the queue; it resumes after its last completed operation. Scope: `submit`."""
    return await service.retry(principal.tenant, id)


# --- API keys (scope `admin`: an admin key manages the keys of its own tenant) ----------------------------


@router.post(
    "/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses={**INVALID, **AUTH},
    tags=["api keys"],
    summary="Create an API key (shown once)",
)
async def create_key(body: ApiKeyCreate, keys: Keys, principal: Admin) -> ApiKeyCreated:
    """The answer holds the key itself, this once: only its hash is stored. `tenant` defaults to the caller's;
    another tenant's is refused (403): tenants' keys are created with the management command. Scope: `admin`."""
    tenant = body.tenant or principal.tenant
    if tenant != principal.tenant:
        raise ForbiddenError("an admin key creates keys of its own tenant only")
    return await keys.create(tenant, [scope.value for scope in body.scopes], body.name)


@router.get("/keys", response_model=list[ApiKeyResponse], responses={**AUTH}, tags=["api keys"])
async def list_keys(keys: Keys, principal: Admin) -> list[ApiKeyResponse]:
    """The caller's tenant's keys, revoked ones included; never the keys themselves. Scope: `admin`."""
    return await keys.list(principal.tenant)


@router.delete(
    "/keys/{id}",
    response_model=ApiKeyResponse,
    responses={404: _problem("No such key (or another tenant's)."), 422: INVALID[422], **AUTH},
    tags=["api keys"],
)
async def revoke_key(id: Annotated[UUID, Path()], keys: Keys, principal: Admin) -> ApiKeyResponse:
    """Revokes the key at once; its stream tokens stop working too. Scope: `admin`."""
    return await keys.revoke_by_id(id, principal.tenant)
