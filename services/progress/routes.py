from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Request, Response
from sse_starlette import EventSourceResponse

from services.progress.service import ProgressStreams, StreamFinished

router = APIRouter(prefix="/api/v1")


def _parse_last_event_id(value: str | None) -> int | None:
    # Ids are ours (per-object sequence numbers); anything else a client sends is treated as "no position".
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


@router.get("/progress/{id}/stream", response_class=Response)
async def progress_stream(
    id: Annotated[UUID, Path()],
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    streams: ProgressStreams = request.app.state.streams
    position = _parse_last_event_id(last_event_id)
    try:
        await streams.check(id, position)
    except StreamFinished:
        return Response(status_code=204)  # tells EventSource to stop reconnecting
    return EventSourceResponse(
        streams.events(id, position),
        ping=request.app.state.settings.sse_ping_seconds,
        headers={"X-Accel-Buffering": "no"},
    )
