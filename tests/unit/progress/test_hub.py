"""The progress hub: in-process fan-out of object events to SSE subscribers."""

import asyncio
from datetime import UTC, datetime
from uuid import UUID, uuid4

import orjson
import pytest

from libs.common.domain import ObjectState
from libs.common.events import ObjectProgressedV1
from libs.common.progress import Progress, ProgressDocument
from services.progress.hub import Hub, Subscription


def event(object_id: UUID, seq: int, state: ObjectState = ObjectState.PROCESSING) -> ObjectProgressedV1:
    now = datetime.now(UTC)
    document = ProgressDocument(
        id=object_id,
        identifier=f"object-{object_id}",
        state=state,
        current_operation="validate",
        progress=Progress(current=1, total=1, message="Executing validate"),
        operations_status={},
        s3_artifacts={},
        error_message=None,
        task_id=uuid4(),
        operations=["validate"],
        created_at=now,
        updated_at=now,
    )
    return ObjectProgressedV1(object_id=object_id, seq=seq, change="state_changed", document=document)


def drain(subscription: Subscription) -> list[int | None]:
    """The seqs queued for the subscriber; None for the overflow marker."""
    seqs: list[int | None] = []
    while not subscription.queue.empty():
        update = subscription.queue.get_nowait()
        seqs.append(None if update is None else update.seq)
    return seqs


def test_publish_delivers_every_event_to_every_subscriber_of_the_object() -> None:
    hub = Hub(queue_size=10)
    object_id = uuid4()
    with hub.subscribe(object_id) as first, hub.subscribe(object_id) as second, hub.subscribe(object_id) as third:
        for seq in (1, 2, 3):
            hub.publish(event(object_id, seq))
        assert [drain(sub) for sub in (first, second, third)] == [[1, 2, 3]] * 3
        assert not any(sub.overflowed for sub in (first, second, third))


def test_publish_delivers_nothing_to_subscribers_of_other_objects() -> None:
    hub = Hub(queue_size=10)
    watched, other = uuid4(), uuid4()
    with hub.subscribe(watched) as mine, hub.subscribe(other) as theirs:
        hub.publish(event(watched, 1))
        hub.publish(event(uuid4(), 1))
        assert drain(mine) == [1]
        assert drain(theirs) == []


def test_publish_is_a_no_op_when_nobody_subscribes() -> None:
    hub = Hub(queue_size=1)
    hub.publish(event(uuid4(), 1))
    assert hub.subscriber_count == 0


def test_publish_marks_overflow_and_keeps_the_queue_when_subscriber_falls_behind() -> None:
    hub = Hub(queue_size=2)
    object_id = uuid4()
    with hub.subscribe(object_id) as slow, hub.subscribe(object_id) as fast:
        hub.publish(event(object_id, 1))
        assert drain(fast) == [1]
        hub.publish(event(object_id, 2))
        assert drain(fast) == [2]
        hub.publish(event(object_id, 3))
        hub.publish(event(object_id, 4))
        assert slow.overflowed
        # What fitted is kept, then the marker that closes the stream; the subscriber resumes from the database.
        assert drain(slow) == [1, 2, None]
        assert drain(fast) == [3, 4]
        assert not fast.overflowed


def test_every_subscriber_gets_the_document_encoded_once_as_json() -> None:
    hub = Hub(queue_size=4)
    object_id = uuid4()
    published = event(object_id, 1)
    with hub.subscribe(object_id) as first, hub.subscribe(object_id) as second:
        hub.publish(published)
        one, other = first.queue.get_nowait(), second.queue.get_nowait()
    assert one is other, "one encoding shared by every subscriber"
    assert one is not None
    assert orjson.loads(one.data) == published.document.model_dump(mode="json")
    assert not one.terminal


def test_subscribe_unregisters_on_exit() -> None:
    hub = Hub(queue_size=1)
    object_id = uuid4()
    with hub.subscribe(object_id):
        with hub.subscribe(object_id):
            assert hub.subscriber_count == 2
        assert hub.subscriber_count == 1
    assert hub.subscriber_count == 0
    hub.publish(event(object_id, 1))


def test_subscribe_unregisters_when_the_body_raises() -> None:
    hub = Hub(queue_size=1)
    with pytest.raises(RuntimeError), hub.subscribe(uuid4()):
        raise RuntimeError
    assert hub.subscriber_count == 0


async def test_subscriber_waiting_on_the_queue_wakes_on_publish() -> None:
    hub = Hub(queue_size=4)
    object_id = uuid4()
    with hub.subscribe(object_id) as sub:
        waiter = asyncio.create_task(sub.queue.get())
        await asyncio.sleep(0)
        assert not waiter.done()
        hub.publish(event(object_id, 7))
        received = await asyncio.wait_for(waiter, timeout=1)
    assert received is not None
    assert received.seq == 7
