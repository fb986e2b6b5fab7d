"""HTTP routes of SPEC §5: parse, call the service, shape the answer."""

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from libs.common.domain import ObjectState
from libs.common.progress import ProgressDocument
from services.gateway.proxy import StreamProxy
from services.gateway.schemas import (
    BulkRetryRequest,
    BulkRetryResponse,
    CommandResponse,
    Identifier,
    ObjectPage,
    ObjectResponse,
    Problem,
    ProcessRequest,
    ProcessResponse,
    StatusResponse,
)
from services.gateway.service import GatewayService

router = APIRouter(prefix="/api/v1")


def _problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description, "content": {"application/problem+json": {}}}


INVALID: dict[int | str, dict[str, Any]] = {
    400: _problem("The body is not valid JSON."),
    422: _problem("The request does not match the schema."),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _problem("No such object.")}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: _problem("A backing service is unavailable; retry after `Retry-After` seconds.")
}

ObjectId = Annotated[UUID, Path(description="The object's id, as returned by POST /api/v1/process.")]


def get_service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


def get_proxy(request: Request) -> StreamProxy:
    proxy: StreamProxy = request.app.state.proxy
    return proxy


Service = Annotated[GatewayService, Depends(get_service)]


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
        **UNAVAILABLE,
    },
    summary="Submit an object for processing",
)
async def process(body: ProcessRequest, request: Request, response: Response, service: Service) -> ProcessResponse:
    """Records the object durably (a 2xx means it will not be lost) and queues it.

    Submitting an identifier again is idempotent: the answer is the existing object (200), and nothing changes.
    """
    payload_bytes = len(await request.body()) if body.payload is not None else 0
    answer, created = await service.submit(body, payload_bytes)
    if not created:
        response.status_code = status.HTTP_200_OK
    return answer


@router.get("/progress/{id}", response_model=ProgressDocument, responses={**NOT_FOUND, 422: INVALID[422]})
async def progress(id: ObjectId, service: Service) -> ProgressDocument:
    return await service.progress(id)


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
        **UNAVAILABLE,
    },
    summary="Stream progress as Server-Sent Events",
)
async def progress_stream(
    id: ObjectId, request: Request, proxy: Annotated[StreamProxy, Depends(get_proxy)]
) -> Response:
    """Sends the current progress document at once, then one event per change, and ends after a terminal state.

    Each event has an `id:`; a client that reconnects with `Last-Event-ID` resumes without gaps.
    """
    return await proxy.forward(request, f"/api/v1/progress/{id}/stream")


@router.get("/status", response_model=StatusResponse)
async def system_status(service: Service) -> StatusResponse:
    return await service.status()


@router.get("/objects", response_model=ObjectPage, responses={422: INVALID[422], **UNAVAILABLE})
async def list_objects(
    service: Service,
    state: Annotated[
        ObjectState | None, Query(description="Only objects in this state; `failed` lists the dead letters.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
) -> ObjectPage:
    """Objects oldest first, a page at a time. `?state=failed` is the dead-letter queue: retry them one by one
    (`POST /api/v1/objects/{id}/retry`) or in bulk (`POST /api/v1/objects/retry`)."""
    return await service.list_objects(state, cursor, limit)


@router.post("/objects/retry", response_model=BulkRetryResponse, responses={**INVALID, **UNAVAILABLE})
async def retry_many(body: BulkRetryRequest, service: Service) -> BulkRetryResponse:
    """Re-queue failed objects in bulk: the given `ids`, or every failed object (`all_failed`, up to `limit`)."""
    return await service.retry_many(body)


@router.get("/objects/{identifier}", response_model=ObjectResponse, responses={**NOT_FOUND, 422: INVALID[422]})
async def object_by_identifier(identifier: Annotated[Identifier, Path()], service: Service) -> ObjectResponse:
    return await service.object_by_identifier(identifier)


@router.post(
    "/objects/{id}/cancel",
    response_model=CommandResponse,
    responses={
        202: {"model": CommandResponse, "description": "Processing: cancelled once the running operation ends."},
        409: _problem("The object is in a state that cannot be cancelled."),
        **NOT_FOUND,
        422: INVALID[422],
        **UNAVAILABLE,
    },
)
async def cancel(id: ObjectId, service: Service) -> JSONResponse:
    """Pending and queued objects are cancelled at once (200); a processing one after its running operation (202)."""
    answer = await service.cancel(id)
    code = status.HTTP_200_OK if answer.state == "cancelled" else status.HTTP_202_ACCEPTED
    return JSONResponse(answer.model_dump(mode="json"), status_code=code)


@router.post(
    "/objects/{id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CommandResponse,
    responses={409: _problem("Only failed objects can be retried."), **NOT_FOUND, 422: INVALID[422], **UNAVAILABLE},
)
async def retry(id: ObjectId, service: Service) -> CommandResponse:
    """Puts a failed object back in the queue; it resumes after its last completed operation."""
    return await service.retry(id)
