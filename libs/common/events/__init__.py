"""Every message that crosses a service boundary. Schemas here are the contract; docs/events.md describes them."""

from libs.common.events.base import Message
from libs.common.events.objects import (
    AnyObjectCommand,
    CancelObjectV1,
    CommandReplyV1,
    ObjectCommand,
    ObjectProgressedV1,
    RetryObjectV1,
    SubmitObjectV1,
)
from libs.common.events.operations import (
    AnyOperationResult,
    ChainedOperation,
    OperationCancelledV1,
    OperationCompletedV1,
    OperationFailedV1,
    OperationMessage,
    OperationStartedV1,
    RunOperationV1,
)

__all__ = [
    "AnyObjectCommand",
    "AnyOperationResult",
    "CancelObjectV1",
    "ChainedOperation",
    "CommandReplyV1",
    "Message",
    "ObjectCommand",
    "ObjectProgressedV1",
    "OperationCancelledV1",
    "OperationCompletedV1",
    "OperationFailedV1",
    "OperationMessage",
    "OperationStartedV1",
    "RetryObjectV1",
    "RunOperationV1",
    "SubmitObjectV1",
]
