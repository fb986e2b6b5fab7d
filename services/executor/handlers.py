"""The executor's consumers: the live subscriber and the reclaimer run commands through one `Executor`."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub
from pydantic import BaseModel, TypeAdapter
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from libs.common.broker import StreamSubscription
from libs.common.events import (
    AnyOperationResult,
    OperationCompletedV1,
    OperationFailedV1,
    OperationStartedV1,
    RunOperationV1,
)
from libs.common.events.streams import (
    DATA_FIELD,
    EXECUTOR_GROUP,
    OPERATION_COMMANDS,
    OPERATION_RESULTS,
    RUN_DONE,
    cancel_requested_key,
    running_operation_key,
)
from libs.common.reclaim import Reclaimer, entry_id_of, heartbeat
from libs.common.retry import backoff_delay
from services.executor.service import OperationRunner
from services.executor.settings import ExecutorSettings

log = structlog.get_logger()

DONE_TTL_MS = 120_000
"""How long a finished operation's running key remembers it. Duplicates come within seconds (a relay that
republished after 5 s, a reclaim after CLAIM_IDLE_MS), so two minutes covers them, and the keys stay few
(operations per second x 120). A later duplicate runs the operation again; its result is ignored as stale."""
PUBLISH_ATTEMPTS = 8
"""About 25 s of backoff: longer than a Redis restart."""


@dataclass(frozen=True)
class Published:
    """What came back with a published result."""

    cancelled: bool = False
    """The object's cancellation was requested (its cancel key is set)."""
    held: bool = False
    """The running key asked for is now this executor's."""


@dataclass
class Executor:
    settings: ExecutorSettings
    # Built in the lifespan (they need connections); None before start-up.
    runner: OperationRunner | None = None
    redis: Redis | None = field(default=None, repr=False)
    busy: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def execute(self, command: RunOperationV1, entry_id: str, *, redelivered: bool = False) -> None:
        """Run one command: its operation, then those in its `then`. Acknowledged by the caller only if this returns:
        after each artifact is in S3 and each result is published. Raises (leaving the entry pending, for the
        Reclaimer) on what may pass later; the Reclaimer's run of it then finds the operations that completed.
        `redelivered`: the entry was claimed from another consumer, so operations may have completed."""
        runner, redis = self.runner, self.redis
        if runner is None or redis is None:
            raise RuntimeError("executor not started")
        # Bound for this command only: bound for good, its ids would label the consumer's next lines (the next
        # message's "Received") too.
        with structlog.contextvars.bound_contextvars(
            object_id=str(command.object_id), message_id=str(command.message_id)
        ):
            step: RunOperationV1 | None = command
            busy = False
            held = False  # the step's running key taken already, with the report of the step before
            try:
                while step is not None:
                    with structlog.contextvars.bound_contextvars(operation=step.operation):
                        async with self._beating(step, entry_id):
                            if not busy:
                                # One command at a time in this executor, whether read live or reclaimed, chain and
                                # all; its entry is beaten for while it waits.
                                await self.busy.acquire()
                                busy = True
                            step, held = await self._run_step(runner, redis, step, redelivered=redelivered, held=held)
            finally:
                if busy:
                    self.busy.release()

    def _beating(self, step: RunOperationV1, entry_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        return heartbeat(
            str(self.settings.redis_url),
            OPERATION_COMMANDS,
            EXECUTOR_GROUP,
            self.settings.instance_id,
            entry_id,
            self.heartbeat_seconds,
            lock=(running_operation_key(step.object_id, step.operation, step.task_id), self.settings.claim_idle_ms),
        )

    async def _run_step(
        self, runner: OperationRunner, redis: Redis, step: RunOperationV1, *, redelivered: bool, held: bool
    ) -> tuple[RunOperationV1 | None, bool]:
        """Run one operation and publish its result; returns the chain's next step, if it is to run, and whether
        its running key is taken already (`held`, for the next call)."""
        # One run of an operation at a time across executors: a copy of a command that another executor is running
        # (duplicated, re-sent after Redis lost its streams, or claimed from a consumer that was only slow) waits
        # for that run, then reports its artifact instead of computing it again. The key expires if its holder
        # dies, so the wait ends in a takeover; after a run it says DONE for a while, so a late copy knows too.
        lock_key = running_operation_key(step.object_id, step.operation, step.task_id)
        ran_before = False if held else await self._hold(redis, lock_key)
        next_key: str | None = None
        try:
            # A command this old may be a late duplicate of one whose DONE mark has expired: look for its artifact.
            stale = datetime.now(UTC) - step.occurred_at > timedelta(milliseconds=DONE_TTL_MS)
            may_be_done = ran_before or redelivered or step.resent or stale
            async with self._reporting_start(runner.started(step)):
                result = await runner.run(step, may_be_done=may_be_done)
            following = step.following(result) if isinstance(result, OperationCompletedV1) else None
            # Before going on, in the same round trip: whether the object's cancellation was requested, and the next
            # operation's running key (taken as _hold would first try to; if it is not free, _hold sorts it out).
            cancel_key = cancel_requested_key(step.object_id, step.task_id) if following is not None else None
            if following is not None:
                next_key = running_operation_key(following.object_id, following.operation, following.task_id)
            published = await self._publish(result, done_key=lock_key, cancel_key=cancel_key, hold_key=next_key)
        except BaseException:
            await self._release(redis, lock_key)
            if next_key is not None:
                await self._release(redis, next_key)
            raise
        if following is not None and published.cancelled:
            log.info("operation.chain_cancelled", next_operation=following.operation)
            if published.held and next_key is not None:
                await self._release(redis, next_key)
            await self._publish(runner.cancelled(following))
            return None, False
        return following, published.held

    @contextlib.asynccontextmanager
    async def _reporting_start(self, started: OperationStartedV1) -> AsyncIterator[None]:
        """Report the operation started once it has run for `started_report_delay_ms`. One that ends sooner reports
        only its result: a start nobody would have seen costs a message, a transaction and an event, which was a
        third of the orchestrator's work for short operations (Celery does not report starts by default at all)."""
        delay = self.settings.started_report_delay_ms / 1000
        publishing = False

        async def report() -> None:
            nonlocal publishing
            if delay:
                await asyncio.sleep(delay)
            publishing = True
            await self._publish(started)  # stamped when the operation began

        task = asyncio.create_task(report())
        if not delay:
            await task
        try:
            yield
        finally:
            if not publishing:
                task.cancel()
            else:
                try:
                    await task  # a start being published goes out before the result
                except Exception:
                    log.warning("operation.start_report_failed", exc_info=True)

    async def _hold(self, redis: Redis, key: str) -> bool:
        """Take the operation's running key, waiting while another executor holds it. True when a run of this
        operation finished before (the key said DONE)."""
        me = self.settings.instance_id
        while not await redis.set(key, me, nx=True, px=self.settings.claim_idle_ms):
            holder = await redis.get(key)
            if holder == me.encode():
                return False
            if holder == RUN_DONE and await redis.set(key, me, xx=True, px=self.settings.claim_idle_ms):
                return True
            await asyncio.sleep(self.heartbeat_seconds / 2)
        return False

    async def _release(self, redis: Redis, key: str) -> None:
        try:
            if await redis.get(key) == self.settings.instance_id.encode():
                await redis.delete(key)
        except RedisError:  # Redis is down: the key expires by itself
            log.warning("running_key.release_failed", key=key)

    async def give_up(self, body: bytes, reason: str) -> None:
        """A command dead-lettered after too many deliveries: fail its object with the reason, at the operation of
        its chain it could not get past (the first whose artifact is not stored)."""
        try:
            command = RunOperationV1.model_validate_json(body)
        except ValueError:
            return
        if self.runner is None:
            raise RuntimeError("executor not started")
        step: RunOperationV1 | None = command
        try:
            while step is not None and (stored := await self.runner.stored_result(step)) is not None:
                step = step.following(stored)
        except Exception:  # S3 unreachable: fail at the operation reached; if it is stale, that changes nothing
            log.warning("give_up.artifacts_unreadable", exc_info=True)
        if step is None:  # every operation completed; their results were published, or a re-send reports them
            return
        await self._publish(
            OperationFailedV1(
                object_id=step.object_id,
                task_id=step.task_id,
                operation=step.operation,
                index=step.index,
                executor_id=self.settings.instance_id,
                error=f"gave up: {reason}",
            )
        )

    async def idle(self) -> bool:
        """Claim another consumer's work only when not running an operation already."""
        return not self.busy.locked()

    @property
    def heartbeat_seconds(self) -> float:
        return self.settings.claim_idle_ms / 1000 / 3

    async def _publish(
        self,
        message: BaseModel,
        *,
        done_key: str | None = None,
        cancel_key: str | None = None,
        hold_key: str | None = None,
    ) -> Published:
        """Add `message` to the results stream. In the same round trip, after it: with `done_key`, mark that
        operation's run done; with `cancel_key`, read whether it is set; with `hold_key`, take that running key if it
        is free."""
        # Redis restarting must not throw away finished work: the artifact is in S3, only the report is missing,
        # and the command's entry may be gone with Redis's data (nothing would redeliver it).
        if self.redis is None:
            raise RuntimeError("executor not started")
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    # A plain XADD of the message's JSON, as FastStream's publisher would write it (PlainJsonFormat),
                    # without its per-publish middleware path.
                    pipe.xadd(
                        OPERATION_RESULTS,
                        {DATA_FIELD: message.model_dump_json()},
                        maxlen=self.settings.stream_maxlen,
                        approximate=True,
                    )
                    if done_key is not None:
                        pipe.set(done_key, RUN_DONE, px=DONE_TTL_MS)
                    if cancel_key is not None:
                        pipe.get(cancel_key)
                    if hold_key is not None:
                        pipe.set(hold_key, self.settings.instance_id, nx=True, px=self.settings.claim_idle_ms)
                    added, *rest = await pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                delay = backoff_delay(attempt, 0.2)
                log.warning("result.publish_retry", attempt=attempt, delay=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            if isinstance(added, Exception):
                raise added
            marked = rest.pop(0) if done_key is not None else None
            if isinstance(marked, Exception):
                # Only a late duplicate would miss the mark, and it finds the artifact or runs again.
                log.warning("running_key.mark_done_failed", key=done_key, error=str(marked))
            # Unreadable counts as not requested: the next operation runs, and the orchestrator cancels after it.
            requested = rest.pop(0) if cancel_key is not None else None
            taken = rest.pop(0) if hold_key is not None else None
            return Published(
                cancelled=requested is not None and not isinstance(requested, Exception),
                held=taken is True,
            )
        raise AssertionError  # unreachable: the loop returns or raises


def register(broker: RedisBroker, settings: ExecutorSettings) -> Executor:
    # Executor._publish writes this stream with plain XADDs; the declaration documents it in AsyncAPI.
    broker.publisher(
        stream=StreamSub(OPERATION_RESULTS, maxlen=settings.stream_maxlen),
        schema=AnyOperationResult,
        title="operation-results",
    )
    executor = Executor(settings)

    @broker.subscriber(
        # max_records=1: an entry read ahead would sit in this consumer's pending list, unbeaten by any
        # heartbeat, while another operation runs, and could be taken over although nothing failed.
        stream=StreamSubscription(
            OPERATION_COMMANDS, group=EXECUTOR_GROUP, consumer=settings.instance_id, max_records=1
        ),
        # Acknowledged only after the artifact is in S3 and the result is published; an error leaves it pending.
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="operation-commands",
    )
    async def on_run_operation(command: RunOperationV1) -> None:
        # From the context, not a `message: RedisStreamMessage` parameter: FastDepends resolves such a parameter
        # in a worker thread, a thread hop for every message.
        await executor.execute(command, entry_id_of(broker.context.get_local("message")))

    return executor


def reclaimer(redis: Redis, settings: ExecutorSettings, executor: Executor) -> Reclaimer:
    commands: TypeAdapter[RunOperationV1] = TypeAdapter(RunOperationV1)

    async def handle(body: bytes, entry_id: str) -> None:
        await executor.execute(commands.validate_json(body), entry_id, redelivered=True)

    return Reclaimer(
        redis=redis,
        stream=OPERATION_COMMANDS,
        group=EXECUTOR_GROUP,
        consumer=settings.instance_id,
        handler=handle,
        idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries,
        maxlen=settings.stream_maxlen,
        on_dead=executor.give_up,
        count=1,
        ready=executor.idle,
    )
