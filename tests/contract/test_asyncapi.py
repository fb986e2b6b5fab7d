"""The checked-in AsyncAPI documents (docs/asyncapi/) are what the code generates, and describe the real topology."""

import json
from typing import Any

import pytest

from deploy.asyncapi import BROKERS, generate_all, path_of
from libs.common.events.streams import (
    CONSUMER_GROUPS,
    OBJECT_COMMANDS,
    OBJECT_EVENTS,
    OPERATION_COMMANDS,
    OPERATION_RESULTS,
)

RECEIVE, SEND = "receive", "send"

TOPOLOGY: dict[str, dict[str, str]] = {
    "gateway": {OBJECT_COMMANDS: SEND},
    "orchestrator": {
        OBJECT_COMMANDS: RECEIVE,
        OPERATION_RESULTS: RECEIVE,
        OPERATION_COMMANDS: SEND,
        OBJECT_EVENTS: SEND,
    },
    "executor": {OPERATION_COMMANDS: RECEIVE, OPERATION_RESULTS: SEND},
    "progress": {OBJECT_EVENTS: RECEIVE},
}
"""Which streams each service reads and writes (docs/events.md, "Streams")."""

MESSAGES: dict[str, set[str]] = {
    OBJECT_COMMANDS: {"SubmitObjectV1", "CancelObjectV1", "RetryObjectV1"},
    OPERATION_COMMANDS: {"RunOperationV1"},
    OPERATION_RESULTS: {"OperationStartedV1", "OperationCompletedV1", "OperationFailedV1", "OperationCancelledV1"},
    OBJECT_EVENTS: {"ObjectProgressedV1"},
}


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return generate_all()


def checked_in(service: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path_of(service).read_text(encoding="utf-8"))
    return document


def resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def payload_classes(document: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """Titles of the message classes a payload schema admits: itself, or each member of its union."""
    if "$ref" in schema:
        return payload_classes(document, resolve(document, schema["$ref"]))
    if "oneOf" in schema:
        return {title for member in schema["oneOf"] for title in payload_classes(document, member)}
    return {schema["title"]}


def test_every_service_has_a_document() -> None:
    assert set(BROKERS) == set(TOPOLOGY)


@pytest.mark.parametrize("service", sorted(TOPOLOGY))
def test_checked_in_document_is_current(service: str, generated: dict[str, str]) -> None:
    path = path_of(service)
    assert path.is_file(), f"{path} is missing: run `python -m deploy.asyncapi`"
    assert path.read_text(encoding="utf-8") == generated[service], (
        f"{path} is out of date: run `python -m deploy.asyncapi`"
    )


@pytest.mark.parametrize("service", sorted(TOPOLOGY))
def test_document_names_the_streams_the_service_uses(service: str) -> None:
    document = checked_in(service)
    actions = {
        resolve(document, operation["channel"]["$ref"])["address"]: operation["action"]
        for operation in document["operations"].values()
    }
    assert actions == TOPOLOGY[service]


@pytest.mark.parametrize("service", sorted(TOPOLOGY))
def test_document_carries_each_streams_message_classes(service: str) -> None:
    document = checked_in(service)
    for channel in document["channels"].values():
        classes = {
            title
            for message in channel["messages"].values()
            for title in payload_classes(document, resolve(document, message["$ref"])["payload"])
        }
        assert classes == MESSAGES[channel["address"]], channel["address"]


@pytest.mark.parametrize("service", sorted(TOPOLOGY))
def test_readers_use_the_streams_consumer_group(service: str) -> None:
    document = checked_in(service)
    for channel in document["channels"].values():
        binding = channel["bindings"]["redis"]
        if binding["method"] == "xadd":
            continue
        stream = channel["address"]
        groups = CONSUMER_GROUPS[stream]
        if groups:
            assert binding["method"] == "xreadgroup", stream
            assert binding["groupName"] in groups, stream
        else:  # a public stream: read without a group, from "$"
            assert binding["method"] == "xread", stream
