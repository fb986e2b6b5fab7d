"""Stream and consumer-group names: the topology every service agrees on.

Every entry on every stream has one field, `__data__`, holding the message as UTF-8 JSON (the field name is
the one FastStream reads, so any Redis client and FastStream consumers read the same entries).
"""

from typing import Final

OBJECT_COMMANDS: Final = "objects:commands"
"""gateway -> orchestrator: SubmitObjectV1, CancelObjectV1, RetryObjectV1."""
OPERATION_COMMANDS: Final = "operations:commands"
"""orchestrator -> executor group: RunOperationV1."""
OPERATION_RESULTS: Final = "operations:results"
"""executors -> orchestrator: OperationStartedV1, OperationCompletedV1, OperationFailedV1."""
OBJECT_EVENTS: Final = "objects:events"
"""orchestrator -> anyone: ObjectProgressedV1. Public; read it with XREAD or a consumer group of your own."""
DEAD_LETTERS: Final = "deadletter"
"""Any consumer -> operators: entries that could not be parsed, with the reason."""

ORCHESTRATOR_GROUP: Final = "orchestrator"
EXECUTOR_GROUP: Final = "executor"

CONSUMER_GROUPS: Final[dict[str, tuple[str, ...]]] = {
    OBJECT_COMMANDS: (ORCHESTRATOR_GROUP,),
    OPERATION_COMMANDS: (EXECUTOR_GROUP,),
    OPERATION_RESULTS: (ORCHESTRATOR_GROUP,),
    OBJECT_EVENTS: (),
    DEAD_LETTERS: (),
}

DATA_FIELD: Final = "__data__"


def running_operation_key(object_id: object, operation: str, task_id: object) -> str:
    """Holds the id of the executor running this operation (renewed every second, expiring if it dies): one run
    at a time across executors, and the orchestrator's evidence that the work is not lost. After a run it holds
    RUN_DONE for a while, so that a late duplicate of the command knows."""
    return f"executor:running:{object_id}:{operation}:{task_id}"


RUN_DONE: Final = b"done"


def cancel_requested_key(object_id: object, task_id: object) -> str:
    """Set by the orchestrator once a processing object's cancellation is committed: the executor running the
    object's chain of operations looks at it before starting the next one."""
    return f"executor:cancel:{object_id}:{task_id}"


def as_text(value: bytes | str) -> str:
    """A value read from Redis (bytes, or str with decode_responses) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def reply_channel(service_name: str, instance_id: str) -> str:
    """The pub/sub channel on which one gateway instance receives command replies."""
    return f"replies:{service_name}:{instance_id}"
