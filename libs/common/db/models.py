"""The PostgreSQL schema. Only the orchestrator writes the object tables; the gateway and progress service read
them. `api_key` is the gateway's own: it writes it (keys are created and revoked there) and progress reads it."""

from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from libs.common.db.base import Base


class ProcessingObject(Base):
    __tablename__ = "processing_object"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), server_default=text("'default'"))
    """Whose object it is: the tenant of the credential that submitted it. Identifiers are unique per tenant."""
    identifier: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    operations: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    payload: Mapped[Any] = mapped_column(JSONB(none_as_null=True), nullable=True)
    source: Mapped[str | None] = mapped_column(Text)
    data_format: Mapped[str | None] = mapped_column(String(16))
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    object_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=text("'{}'::jsonb"))
    operations_status: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    data_url: Mapped[str | None] = mapped_column(Text)
    """Where the data for the next operation lives: the source, or the latest transform's output."""
    data_url_format: Mapped[str | None] = mapped_column(String(16))
    current_operation: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[UUID]
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    cancel_requested: Mapped[bool] = mapped_column(server_default=text("false"))
    event_seq: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the running operation was handed over (its chain sent, or the one before it completed): the in-flight
    check sends the rest again when it is lost."""

    __table_args__ = (
        UniqueConstraint("tenant", "identifier", name="uq_processing_object_tenant_identifier"),
        # Admission scans queued objects oldest first; the partial index keeps that scan small.
        Index("ix_processing_object_queue", "queued_at", "id", postgresql_where=text("state = 'queued'")),
        Index("ix_processing_object_state", "state"),
    )


class ObjectTransition(Base):
    """Audit trail: one row per state change, written in the same transaction as the change."""

    __tablename__ = "object_transition"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    object_id: Mapped[UUID] = mapped_column(ForeignKey("processing_object.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    event: Mapped[str] = mapped_column(String(32))
    task_id: Mapped[UUID]
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


EVENT_SEQ_MAX = 2**31 - 1
"""The highest `object_event.seq` there can be (an integer column)."""


class ObjectEvent(Base):
    """Every progress document an object went through, numbered; SSE replays from here on Last-Event-ID."""

    __tablename__ = "object_event"

    object_id: Mapped[UUID] = mapped_column(ForeignKey("processing_object.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    change: Mapped[str] = mapped_column(String(32))
    # JSON, not JSONB: the document is replayed to clients byte for byte, with its keys in their original order.
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboxMessage(Base):
    """Messages a committed transaction owes to Redis; the relay publishes and deletes them (transactional outbox)."""

    __tablename__ = "outbox_message"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    stream: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    """An API key. Only its SHA-256 is stored: the key itself is shown once, when it is created.

    Keys are 32 random bytes from `secrets`, so a fast hash is enough (nothing to brute-force); `prefix` is the
    public part of the key, unique, used to find the row and to name the key in listings and logs.
    """

    __tablename__ = "api_key"

    id: Mapped[UUID] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column("hash", String(64))
    tenant: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
