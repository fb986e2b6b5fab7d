"""The envelope every stream entry shares."""

from datetime import UTC, datetime
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def _now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Fields every stream entry carries.

    `message_id` is the consumer's idempotency key: a redelivered or duplicated entry has the same id and
    is applied at most once. Readers ignore fields they do not know (tolerant reader), so a producer may add
    a field with a default without a new version; any other change is a new `...V<n+1>` class.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    message_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=_now)
    object_id: UUID
