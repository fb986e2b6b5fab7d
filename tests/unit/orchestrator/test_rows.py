"""The orchestrator's rows as its SQL names them: a key the statements do not name would be dropped silently."""

from dataclasses import fields
from uuid import uuid4

from libs.common.domain import Operation
from libs.common.events import SubmitObjectV1
from services.orchestrator.repository import INSERTED, MUTABLE, ObjectRow
from services.orchestrator.service import ObjectService


def test_a_new_row_has_exactly_the_columns_the_insert_names() -> None:
    command = SubmitObjectV1(object_id=uuid4(), identifier="x", operations=[Operation.VALIDATE], payload={"a": 1})
    assert set(ObjectService._new_row(command)) == set(INSERTED)


def test_every_column_written_back_is_a_field_of_the_row() -> None:
    assert set(MUTABLE) <= {f.name for f in fields(ObjectRow)}
    assert set(INSERTED) <= {f.name for f in fields(ObjectRow)}
