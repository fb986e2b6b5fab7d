"""Celery, the pipeline shape: a chain validate -> transform -> analyze, one task per operation.

Worker: the prefork pool with concurrency 3. Celery documents prefork as the pool for work that uses the CPU
(ours parses, computes statistics and serialises JSON in Python, and boto3 signs every request in Python);
threads would serialise that on the GIL, and the I/O waits are short (local S3, PostgreSQL, Redis). Settings
from Celery's "Optimizing" guide for short tasks: prefetch multiplier 1, late acks (at-least-once, like our
pending entries), no rate limits, no result backend (a chain travels in its messages), and no gossip, mingle or
heartbeat events between workers. The cap of 3 here bounds running *operations*, not objects: a chain's next
step goes to the back of the queue, so up to N objects are in flight at once.
"""

from celery import chain  # type: ignore[import-untyped]
from pydantic import JsonValue

from bench.peers.celery_app import celery_app
from bench.peers.common import worker

QUEUE = "bench_celery_chain"

app = celery_app(QUEUE)


@app.task(name="bench.run_operation")  # type: ignore[untyped-decorator]
def run_operation(
    previous: list[str | None] | None,
    object_id: str,
    identifier: str,
    operations: list[str],
    index: int,
    payload: JsonValue,
) -> list[str | None]:
    data = (previous[0], previous[1]) if previous else (None, None)
    url, fmt = worker().run_operation(object_id, identifier, operations, index, payload, data)
    return [url, fmt]


def enqueue(object_id: str, identifier: str, operations: list[str], payload: JsonValue) -> None:
    steps = [run_operation.s(None, object_id, identifier, operations, 0, payload)]
    steps += [run_operation.s(object_id, identifier, operations, i, payload) for i in range(1, len(operations))]
    chain(*steps).apply_async()


def worker_argv(concurrency: int) -> list[str]:
    return [
        *("-A", __name__, "worker", "--pool", "prefork", "--concurrency", str(concurrency), "-Q", QUEUE),
        *("--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"),
        *("-n", f"{QUEUE}@%h"),
    ]


COMMAND = "celery"
