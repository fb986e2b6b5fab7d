"""The Celery application both Celery peers use, with their best documented settings for this work."""

import os

from celery import Celery  # type: ignore[import-untyped]


def celery_app(name: str) -> Celery:
    """At-least-once like our pipeline (late acks, re-queued if a worker dies), one task reserved per worker
    process at a time, no result backend (nobody reads results), no rate limiting."""
    app = Celery(name, broker=os.environ.get("BENCH_PEER_REDIS_URL", "redis://127.0.0.1:6381/1"))
    app.conf.update(
        task_default_queue=name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_disable_rate_limits=True,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    return app
