"""Every message type's sample in tests/contract/events/ parses with the class a consumer would use."""

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

import libs.common.events as events
from libs.common.domain import Operation
from libs.common.events import (
    AnyObjectCommand,
    AnyOperationResult,
    CancelObjectV1,
    ChainedOperation,
    CommandReplyV1,
    ObjectProgressedV1,
    OperationCancelledV1,
    OperationCompletedV1,
    OperationFailedV1,
    OperationStartedV1,
    RetryObjectV1,
    RunOperationV1,
    SubmitObjectV1,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "contract" / "events"
EVENTS_DOC = ROOT / "docs" / "events.md"

Reader = Callable[[str | bytes], BaseModel]

OBJECT_COMMAND: TypeAdapter[AnyObjectCommand] = TypeAdapter(AnyObjectCommand)
OPERATION_RESULT: TypeAdapter[AnyOperationResult] = TypeAdapter(AnyOperationResult)

CONTRACTS: dict[str, tuple[type[BaseModel], Reader]] = {
    # type: (class, how its consumer reads it: through the stream's union where the stream has one)
    "object.submit.v1": (SubmitObjectV1, OBJECT_COMMAND.validate_json),
    "object.cancel.v1": (CancelObjectV1, OBJECT_COMMAND.validate_json),
    "object.retry.v1": (RetryObjectV1, OBJECT_COMMAND.validate_json),
    "object.command_reply.v1": (CommandReplyV1, CommandReplyV1.model_validate_json),
    "object.progressed.v1": (ObjectProgressedV1, ObjectProgressedV1.model_validate_json),
    "operation.run.v1": (RunOperationV1, RunOperationV1.model_validate_json),
    "operation.started.v1": (OperationStartedV1, OPERATION_RESULT.validate_json),
    "operation.completed.v1": (OperationCompletedV1, OPERATION_RESULT.validate_json),
    "operation.failed.v1": (OperationFailedV1, OPERATION_RESULT.validate_json),
    "operation.cancelled.v1": (OperationCancelledV1, OPERATION_RESULT.validate_json),
}
TYPES = sorted(CONTRACTS)
UNIONS: dict[str, tuple[Reader, list[str]]] = {
    "AnyObjectCommand": (OBJECT_COMMAND.validate_json, ["object.submit.v1", "object.cancel.v1", "object.retry.v1"]),
    "AnyOperationResult": (
        OPERATION_RESULT.validate_json,
        ["operation.started.v1", "operation.completed.v1", "operation.failed.v1", "operation.cancelled.v1"],
    ),
}


def message_classes() -> list[type[BaseModel]]:
    """Every concrete message class the events package exports (those with a `type` tag)."""
    exported = (getattr(events, name) for name in events.__all__)
    return [
        obj for obj in exported if isinstance(obj, type) and issubclass(obj, BaseModel) and "type" in obj.model_fields
    ]


def sample_text(type_: str) -> str:
    return (SAMPLES / f"{type_}.json").read_text(encoding="utf-8")


def sample(type_: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(sample_text(type_))
    return raw


def read(type_: str, raw: str | bytes) -> BaseModel:
    _, reader = CONTRACTS[type_]
    return reader(raw)


def test_every_message_class_has_a_sample_and_every_sample_a_class() -> None:
    tags = {cls.model_fields["type"].default for cls in message_classes()}
    assert tags == set(CONTRACTS)
    assert {path.name.removesuffix(".json") for path in SAMPLES.glob("*.json")} == set(CONTRACTS)


@pytest.mark.parametrize("type_", TYPES)
def test_sample_parses_with_its_class(type_: str) -> None:
    cls, _ = CONTRACTS[type_]
    message = read(type_, sample_text(type_))
    assert type(message) is cls
    assert message.model_dump(mode="json")["type"] == type_


@pytest.mark.parametrize("type_", TYPES)
def test_sample_spells_out_every_field(type_: str) -> None:
    cls, _ = CONTRACTS[type_]
    assert set(sample(type_)) == set(cls.model_fields)


@pytest.mark.parametrize("type_", TYPES)
def test_round_trip_gives_an_equal_message(type_: str) -> None:
    message = read(type_, sample_text(type_))
    assert read(type_, message.model_dump_json()) == message


@pytest.mark.parametrize("type_", TYPES)
def test_unknown_fields_are_ignored(type_: str) -> None:
    raw = sample(type_)
    raw["added_in_a_later_release"] = {"anything": [1, 2, 3]}
    if "document" in raw:
        raw["document"]["added_in_a_later_release"] = True
        raw["document"]["progress"]["eta_seconds"] = 12
    assert read(type_, json.dumps(raw)) == read(type_, sample_text(type_))


@pytest.mark.parametrize("type_", TYPES)
def test_unknown_type_is_refused(type_: str) -> None:
    raw = sample(type_)
    raw["type"] = "object.exploded.v1"
    with pytest.raises(ValidationError):
        read(type_, json.dumps(raw))


@pytest.mark.parametrize("union", sorted(UNIONS))
def test_union_refuses_types_of_other_streams(union: str) -> None:
    reader, members = UNIONS[union]
    for type_ in TYPES:
        if type_ in members:
            continue
        with pytest.raises(ValidationError):
            reader(sample_text(type_))


@pytest.mark.parametrize("union", sorted(UNIONS))
def test_union_refuses_a_missing_type(union: str) -> None:
    reader, members = UNIONS[union]
    raw = sample(members[0])
    del raw["type"]
    with pytest.raises(ValidationError):
        reader(json.dumps(raw))


@pytest.mark.parametrize("cls", message_classes(), ids=lambda cls: cls.__name__)
def test_no_top_level_field_is_named_data(cls: type[BaseModel]) -> None:
    # FastStream's default Redis message format reads a top-level "data" key as its own envelope (see
    # PlainJsonFormat in libs/common/broker.py): such a message would be silently misread by a FastStream consumer.
    names = {
        name
        for field_name, field in cls.model_fields.items()
        for name in (field_name, field.alias, field.serialization_alias, field.validation_alias)
    }
    assert "data" not in names


def test_docs_examples_are_the_samples() -> None:
    blocks = re.findall(r"```json\n(.*?)```", EVENTS_DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    examples = [example for block in blocks if "type" in (example := json.loads(block))]
    assert {example["type"]: example for example in examples} == {type_: sample(type_) for type_ in TYPES}


def test_a_chains_next_step_takes_the_next_operation_its_options_and_the_output_of_the_one_before() -> None:
    run = RunOperationV1(
        object_id=uuid4(),
        task_id=uuid4(),
        operation=Operation.TRANSFORM,
        index=1,
        total=4,
        identifier="obj",
        data_url="s3://b/in.csv",
        data_format="csv",
        options={"steps": []},
        then=[
            ChainedOperation(operation=Operation.ANALYZE, options={"top": 3}),
            ChainedOperation(operation=Operation.EXPORT),
        ],
    )

    def done(output_url: str | None = None) -> OperationCompletedV1:
        return OperationCompletedV1(
            object_id=run.object_id,
            task_id=run.task_id,
            operation=run.operation,
            index=run.index,
            executor_id="executor-1",
            s3_url="s3://b/obj/transform_result.json",
            duration_ms=1.0,
            output_url=output_url,
            output_format="json" if output_url else None,
        )

    analyze = run.following(done("s3://b/obj/out.json"))

    assert analyze is not None
    assert (analyze.operation, analyze.index, analyze.options) == (Operation.ANALYZE, 2, {"top": 3})
    assert (analyze.data_url, analyze.data_format) == ("s3://b/obj/out.json", "json")
    assert analyze.then == [ChainedOperation(operation=Operation.EXPORT)]
    assert (analyze.object_id, analyze.task_id, analyze.identifier) == (run.object_id, run.task_id, "obj")
    # An operation that wrote no output leaves the data where it was.
    same = run.following(done())
    assert same is not None
    assert (same.data_url, same.data_format) == ("s3://b/in.csv", "csv")
    # After the last, nothing follows.
    assert run.model_copy(update={"then": []}).following(done()) is None
