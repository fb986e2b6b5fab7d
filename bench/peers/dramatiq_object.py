"""dramatiq, one actor message per object running its three operations in sequence (the cap of 3 objects).

Worker: 3 processes of 1 thread each rather than dramatiq's default of threads: the work is CPU in Python
between short local I/O waits, so threads of one process would take turns on the GIL. Everything else is
dramatiq's default middleware (age and time limits, retries) on its Redis broker, which acknowledges a message
only after the actor returns (at-least-once, like ours).
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from pydantic import JsonValue

from bench.peers.common import worker

QUEUE = "bench_dramatiq_object"

broker = RedisBroker(url=os.environ.get("BENCH_PEER_REDIS_URL", "redis://127.0.0.1:6381/1"))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=3)
def process_object(object_id: str, identifier: str, operations: list[str], payload: JsonValue) -> None:
    worker().run_object(object_id, identifier, operations, payload)


def enqueue(object_id: str, identifier: str, operations: list[str], payload: JsonValue) -> None:
    process_object.send(object_id, identifier, operations, payload)


def worker_argv(concurrency: int) -> list[str]:
    return [__name__, "--processes", str(concurrency), "--threads", "1", "--queues", QUEUE]


COMMAND = "dramatiq"
