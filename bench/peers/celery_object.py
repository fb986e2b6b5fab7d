"""Celery, one task per object running its three operations in sequence: the only Celery shape that keeps
our cap of three *objects* in processing.

Worker settings and the choice of the prefork pool are celery_chain's (see its docstring), for the same reasons.
"""

from pydantic import JsonValue

from bench.peers.celery_app import celery_app
from bench.peers.common import worker

QUEUE = "bench_celery_object"

app = celery_app(QUEUE)


@app.task(name="bench.process_object")  # type: ignore[untyped-decorator]
def process_object(object_id: str, identifier: str, operations: list[str], payload: JsonValue) -> None:
    worker().run_object(object_id, identifier, operations, payload)


def enqueue(object_id: str, identifier: str, operations: list[str], payload: JsonValue) -> None:
    process_object.apply_async((object_id, identifier, operations, payload))


def worker_argv(concurrency: int) -> list[str]:
    return [
        *("-A", __name__, "worker", "--pool", "prefork", "--concurrency", str(concurrency), "-Q", QUEUE),
        *("--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"),
        *("-n", f"{QUEUE}@%h"),
    ]


COMMAND = "celery"
