"""Stream subscribers: parse, run the use case in a transaction (shared with those that queued meanwhile), then, in
one round trip, relay its messages, answer the caller and acknowledge the entry."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

import asyncpg
import structlog
from faststream import AckPolicy
from faststream.redis import RedisBroker
from pydantic import TypeAdapter
from redis.asyncio import Redis

from libs.common.events import (
    AnyObjectCommand,
    AnyOperationResult,
    CancelObjectV1,
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
from libs.common.events.streams import (
    OBJECT_COMMANDS,
    OBJECT_EVENTS,
    OPERATION_COMMANDS,
    OPERATION_RESULTS,
    ORCHESTRATOR_GROUP,
    cancel_requested_key,
)
from libs.common.reclaim import Reclaimer
from libs.common.retry import backoff_delay
from services.orchestrator.batches import MAX_BATCH, StreamBatch
from services.orchestrator.database import Database
from services.orchestrator.inflight import lost_operations
from services.orchestrator.outbox import OutboxRelay
from services.orchestrator.repository import ObjectRepository, OutboxRow
from services.orchestrator.service import ObjectService, ResultAheadError, UnitOfWork
from services.orchestrator.settings import OrchestratorSettings

log = structlog.get_logger()
T = TypeVar("T")
UseCase = Callable[[UnitOfWork], Awaitable[T]]

AHEAD_RETRY_DELAYS_S = (0.01, 0.03, 0.1, 0.3)
"""How long a result that came before its object's earlier one waits for it, in this handler, before it is left
pending for the Reclaimer."""
DATABASE_RETRY_SECONDS = 10.0
"""How long a transaction is tried again while PostgreSQL cannot be reached (a restart, a failover) or aborts it
for a conflict (a deadlock): the messages it applies take effect as soon as the database is back, instead of
waiting pending for the Reclaimer (CLAIM_IDLE_MS). Meanwhile this instance reads nothing more, as nothing could be
applied; beyond this, they are left pending as any failure is."""
DATABASE_RETRY_BASE_SECONDS = 0.2
"""The first pause; each next one doubles, up to DATABASE_RETRY_MAX_SECONDS (all jittered to 50-150 %)."""
DATABASE_RETRY_MAX_SECONDS = 1.0
DATABASE_UNREACHABLE = (
    OSError,  # refused, reset, timed out, ConnectionLostError: the server is down or restarting
    asyncpg.PostgresConnectionError,  # the connection was lost mid-transaction
    asyncpg.exceptions.AdminShutdownError,  # the server is shutting down, or a session was terminated
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,  # the server is starting up
    asyncpg.exceptions.TooManyConnectionsError,  # every client reconnecting at once, after a restart
)
TRANSIENT_DATABASE_ERRORS = (
    *DATABASE_UNREACHABLE,
    asyncpg.exceptions.TransactionRollbackError,  # a deadlock or serialization failure: the same again may pass
)
CANCEL_KEY_TTL_MS = 3_600_000
"""How long the word of a cancellation stays for the executor: longer than any operation runs (each later result
of the object says it again anyway)."""


@dataclass(frozen=True)
class Job(Generic[T]):
    use_case: UseCase[T]
    log_context: dict[str, Any]
    """The structlog context (its message and object) of the lines the use case logs."""
    object_id: UUID | None = None
    """The existing object the use case locks, where known: it is locked up front, with its batch's others."""
    submission: SubmitObjectV1 | None = None
    """The object the use case inserts, if it is a submission: inserted up front, with its batch's others."""
    reply_to: str | None = None
    """Where to answer (the command's `reply_to`), once committed."""
    entry: tuple[str, str] | None = None
    """The stream entry (stream, id) the use case comes from, acknowledged once it is committed."""


@dataclass(eq=False)
class _Queued(Generic[T]):
    job: Job[T]
    future: "asyncio.Future[T]"
    taken: bool = False
    """Taken from the queue into a batch: it runs, or has run, exactly once."""


def _settle(future: "asyncio.Future[Any]", *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # its caller has gone (cancelled)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Orchestrator:
    """Runs use cases transactionally and does what must follow each commit.

    Group commit: the use cases of messages that arrive while a transaction is running share the next one. Under
    load that is one BEGIN/COMMIT, one flush, one admission check and one Redis round trip per batch instead of per
    message; alone, a message runs at once, as before. If a shared transaction fails, each of its use cases runs
    again in a transaction of its own, so a message that cannot be applied never fails the others.
    """

    def __init__(self, database: Database, redis: Redis, relay: OutboxRelay, service: ObjectService) -> None:
        self.database = database
        self.redis = redis
        self.relay = relay
        self.service = service
        self._queue: list[_Queued[Any]] = []
        self._running: set[asyncio.Future[None]] = set()
        # One transaction at a time per instance: whoever holds it commits everything queued so far.
        self._turn = asyncio.Lock()

    async def run(self, use_case: UseCase[T]) -> T:
        """Apply `use_case` in a committed transaction, publish what it emitted, and return its result."""
        (outcome,) = await self.run_all([Job(use_case, structlog.contextvars.get_contextvars())])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def run_all(self, jobs: Sequence[Job[T]]) -> list[T | BaseException]:
        """Apply each job's use case in a committed transaction, shared with the others queued meanwhile; returns,
        in order, each one's result or the exception it failed with."""
        loop = asyncio.get_running_loop()
        mine = [_Queued(job, loop.create_future()) for job in jobs]
        self._queue.extend(mine)
        try:
            while any(not queued.taken for queued in mine):
                async with self._turn:
                    if all(queued.taken for queued in mine):  # an earlier holder's batch took them all
                        break
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    for queued in batch:
                        queued.taken = True
                    # In a task of its own, shielded: if this caller is cancelled (shutdown), the others' work, which
                    # may have committed already, is still settled; it must never go back to the queue and run twice.
                    running = asyncio.ensure_future(self._run_batch(batch))
                    self._running.add(running)
                    running.add_done_callback(self._running.discard)
                    await asyncio.shield(running)
            # Settled by now, unless a batch whose caller left (see above) still runs with them.
            outcomes: list[T | BaseException] = await asyncio.gather(
                *(queued.future for queued in mine), return_exceptions=True
            )
            return outcomes
        except BaseException:
            for queued in mine:
                if not queued.taken:
                    self._queue.remove(queued)
                queued.future.cancel()
            raise

    async def _run_batch(self, batch: list[_Queued[Any]], retry_until: float | None = None) -> None:
        """`retry_until`: the loop time after which a transient database error is not retried (by default,
        DATABASE_RETRY_SECONDS from now); the one-by-one runs after a failed shared transaction share its window."""
        batch = [queued for queued in batch if not queued.future.done()]  # callers that left are not run
        if not batch:
            return
        if retry_until is None:
            retry_until = asyncio.get_running_loop().time() + DATABASE_RETRY_SECONDS
        try:
            results = await self._transaction_retried(batch, retry_until)
        except Exception as exc:  # noqa: BLE001 - handed to the callers: their message stays pending, for a retry
            if len(batch) == 1 or isinstance(exc, DATABASE_UNREACHABLE):  # alone, each would only wait as long again
                for queued in batch:
                    _settle(queued.future, error=exc)
                return
            # Any use case may have caused it (or a deadlock with another instance): each runs again alone.
            log.info("batch.retried_one_by_one", size=len(batch), error=type(exc).__name__)
            for queued in batch:
                await self._run_batch([queued], retry_until)
            return
        for queued, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):  # a use case that could not apply yet (see _transaction)
                _settle(queued.future, error=result)
            else:
                _settle(queued.future, result=result)

    async def _transaction_retried(self, batch: list[_Queued[Any]], retry_until: float) -> list[Any]:
        """`_transaction`, again after a pause on a transient database error, until the loop time `retry_until`.

        Running it again is safe: a transaction that failed changed nothing, and one whose commit was cut off
        may have committed, which each use case absorbs as it absorbs a redelivered message."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._transaction(batch)
            except TRANSIENT_DATABASE_ERRORS as exc:
                delay = backoff_delay(attempt, DATABASE_RETRY_BASE_SECONDS, DATABASE_RETRY_MAX_SECONDS)
                # Nobody waits any more (shutdown): the messages stay pending, for whoever runs next.
                if loop.time() + delay > retry_until or all(queued.future.done() for queued in batch):
                    raise
                log.warning("transaction.retry", attempt=attempt, delay=round(delay, 3), error=repr(exc)[:200])
            # Out of the except block: the failure and the frames it holds are let go before the pause.
            await asyncio.sleep(delay)

    async def _transaction(self, batch: list[_Queued[Any]]) -> list[Any]:
        async with self.database.transaction() as connection:
            uow = UnitOfWork(connection)
            # One statement for the batch's row locks instead of one per use case.
            known = {queued.job.object_id for queued in batch if queued.job.object_id is not None}
            if len(known) > 1:
                await uow.lock_all(known)
            # And one INSERT for the batch's submissions instead of one each.
            submissions = [queued.job.submission for queued in batch if queued.job.submission is not None]
            if len(submissions) > 1:
                await self.service.insert_all(uow, submissions)
            results = []
            for queued in batch:
                with structlog.contextvars.bound_contextvars(**queued.job.log_context):
                    try:
                        results.append(await queued.job.use_case(uow))
                    except ResultAheadError as exc:  # raised before it changed anything: the others go on
                        results.append(exc)
            if uow.admission_needed:
                # In the same transaction: a slot freed (or an object queued) is filled without a second round
                # trip. Admission itself cannot deadlock: it skips rows other transactions hold, and takes its
                # lock last. (The use cases before it can, with another instance's batch: see _run_batch.)
                await self.service.admit(uow)
            outbox = await uow.flush()
        await self._after_commit(
            outbox, uow.cancelled_runs, [(queued.job, result) for queued, result in zip(batch, results, strict=True)]
        )
        return results

    async def _after_commit(
        self,
        outbox: Sequence[OutboxRow],
        cancelled_runs: Sequence[tuple[UUID, UUID]],
        outcomes: Sequence[tuple[Job[Any], Any]],
    ) -> None:
        """Everything a committed transaction owes Redis, in one round trip: its outbox messages; the word to the
        executors that cancellations are committed (each starts no further operation of its object); the answers
        to the callers waiting; and the acknowledgement of each applied stream entry (not of one that failed or
        waits: it stays pending, to be applied later).

        Each part is best effort, and nothing here may make the batch run again. An outbox row not published is
        swept later; a caller not answered times out and asks again (a submission again gets its object; a second
        cancel answers `conflict`, as the first took effect); an executor not told runs the object's remaining
        operations, and the object is cancelled after them; an entry not acknowledged is delivered again, and
        finds its effect applied."""
        applied = [(job, result) for job, result in outcomes if not isinstance(result, BaseException)]
        acks: dict[str, list[str]] = {}
        for job, _ in applied:
            if job.entry is not None:
                acks.setdefault(job.entry[0], []).append(job.entry[1])
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                queued = self.relay.add(pipe, outbox)
                for object_id, task_id in cancelled_runs:
                    pipe.set(cancel_requested_key(object_id, task_id), b"1", px=CANCEL_KEY_TTL_MS)
                for job, result in applied:
                    if job.reply_to and isinstance(result, CommandReplyV1):
                        pipe.publish(job.reply_to, result.model_dump_json())
                for stream, entry_ids in acks.items():
                    pipe.xack(stream, ORCHESTRATOR_GROUP, *entry_ids)
                answers = await pipe.execute(raise_on_error=False)
        except Exception:
            log.warning("after_commit.failed", rows=len(outbox), acks=sum(map(len, acks.values())), exc_info=True)
            return
        added, rest = answers[:queued], answers[queued:]
        self.relay.published(
            [row for row, answer in zip(outbox, added, strict=True) if not isinstance(answer, Exception)]
        )
        if failed := [answer for answer in answers if isinstance(answer, Exception)]:
            # What was refused is made good later, as above (rows left in the outbox are swept).
            log.warning(
                "after_commit.partly_failed",
                rows_left=sum(isinstance(answer, Exception) for answer in added),
                others_failed=sum(isinstance(answer, Exception) for answer in rest),
                error=str(failed[0]),
            )

    async def admit(self) -> int:
        async with self.database.transaction() as connection:
            uow = UnitOfWork(connection)
            admitted = await self.service.admit(uow)
            outbox = await uow.flush()
        await self.relay.publish_committed(outbox)
        return admitted

    async def handle_commands(
        self, commands: Sequence[AnyObjectCommand], entries: Sequence[str] | None = None
    ) -> list[BaseException | None]:
        """Apply the commands (each in a committed transaction, shared where they can be) and answer their callers;
        acknowledge each applied one's entry of `entries` (their ids on the commands stream), if given. Returns, in
        order, None for each applied command and the exception for each that failed."""
        ids: Sequence[str | None] = entries or [None] * len(commands)
        outcomes = await self.run_all(
            [self._command_job(command, entry) for command, entry in zip(commands, ids, strict=True)]
        )
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    async def handle_results(
        self, events: Sequence[AnyOperationResult], entries: Sequence[str] | None = None
    ) -> list[BaseException | None]:
        """Apply the executors' results, acknowledging each applied one's entry of `entries`, if given; returns, in
        order, None or the exception each failed with."""
        ids: Sequence[str | None] = entries or [None] * len(events)
        jobs = [self._result_job(event, entry) for event, entry in zip(events, ids, strict=True)]
        outcomes: list[BaseException | None] = [*await self.run_all(jobs)]
        for delay in AHEAD_RETRY_DELAYS_S:
            ahead = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, ResultAheadError)]
            if not ahead:
                break
            # The result before it is most likely being applied right now, by another instance: a moment's wait
            # beats leaving the message to the Reclaimer (CLAIM_IDLE_MS).
            await asyncio.sleep(delay)
            again = await self.run_all([jobs[i] for i in ahead])
            for i, outcome in zip(ahead, again, strict=True):
                outcomes[i] = outcome
        return outcomes

    async def handle_command(self, command: AnyObjectCommand) -> None:
        if error := (await self.handle_commands([command]))[0]:
            raise error

    async def handle_result(self, event: AnyOperationResult) -> None:
        if error := (await self.handle_results([event]))[0]:
            raise error

    def _command_job(self, command: AnyObjectCommand, entry_id: str | None = None) -> Job[CommandReplyV1]:
        service = self.service
        context = _log_context(command)
        entry = (OBJECT_COMMANDS, entry_id) if entry_id else None
        reply_to = command.reply_to
        match command:
            case SubmitObjectV1():
                # A new object: nothing to lock first.
                return Job(
                    lambda uow: service.submit(uow, command),
                    context,
                    submission=command,
                    reply_to=reply_to,
                    entry=entry,
                )
            case CancelObjectV1():
                return Job(
                    lambda uow: service.cancel(uow, command),
                    context,
                    object_id=command.object_id,
                    reply_to=reply_to,
                    entry=entry,
                )
            case RetryObjectV1():
                return Job(
                    lambda uow: service.retry(uow, command),
                    context,
                    object_id=command.object_id,
                    reply_to=reply_to,
                    entry=entry,
                )

    def _result_job(self, event: AnyOperationResult, entry_id: str | None = None) -> Job[None]:
        service = self.service
        context = _log_context(event)
        entry = (OPERATION_RESULTS, entry_id) if entry_id else None
        match event:
            case OperationStartedV1():
                return Job(
                    lambda uow: service.operation_started(uow, event), context, object_id=event.object_id, entry=entry
                )
            case OperationCompletedV1():
                return Job(
                    lambda uow: service.operation_completed(uow, event), context, object_id=event.object_id, entry=entry
                )
            case OperationFailedV1():
                return Job(
                    lambda uow: service.operation_failed(uow, event), context, object_id=event.object_id, entry=entry
                )
            case OperationCancelledV1():
                return Job(
                    lambda uow: service.operation_cancelled(uow, event), context, object_id=event.object_id, entry=entry
                )

    async def redispatch_lost(self, older_than_seconds: float) -> int:
        """Send again the remaining operations of every object whose running operation was handed over more than
        `older_than_seconds` ago and that Redis has lost track of."""
        before = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        async with self.database.connection() as connection:
            in_flight = await ObjectRepository(connection).in_flight_dispatched_before(before)
        lost = await lost_operations(self.redis, in_flight)
        if not lost:
            return 0
        async with self.database.transaction() as connection:
            uow = UnitOfWork(connection)
            count = await self.service.redispatch(uow, lost, before)
            if uow.admission_needed:  # a cancellation took effect: its slot is filled now, not by the admission loop
                await self.service.admit(uow)
            outbox = await uow.flush()
        await self.relay.publish_committed(outbox)
        return count

    async def database_ready(self) -> bool:
        try:
            async with self.database.connection() as connection:
                await connection.execute("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure means: not now
            return False
        return True


def _log_context(message: AnyObjectCommand | AnyOperationResult) -> dict[str, Any]:
    return {"object_id": str(message.object_id), "message_id": str(message.message_id)}


BATCH_NOTE = f"Read in batches of up to {MAX_BATCH} entries; each stream entry holds one of these messages."


def register(broker: RedisBroker, settings: OrchestratorSettings, orchestrator: Orchestrator) -> None:
    commands = StreamBatch(orchestrator.redis, OBJECT_COMMANDS, settings, TypeAdapter(AnyObjectCommand))
    results = StreamBatch(orchestrator.redis, OPERATION_RESULTS, settings, TypeAdapter(AnyOperationResult))

    @broker.subscriber(
        stream=commands.subscription,
        ack_policy=AckPolicy.MANUAL,  # entry by entry, after each one's commit (Orchestrator._after_commit)
        parser=commands.parse,
        decoder=commands.decode,
        title="object-commands",
        description=BATCH_NOTE,
    )
    async def on_object_commands(body: list[AnyObjectCommand]) -> None:
        # The message from the context: FastDepends resolves a `message` parameter in a worker thread.
        await commands.consume(broker.context.get_local("message"), body, orchestrator.handle_commands)

    @broker.subscriber(
        stream=results.subscription,
        ack_policy=AckPolicy.MANUAL,
        parser=results.parse,
        decoder=results.decode,
        title="operation-results",
        description=BATCH_NOTE,
    )
    async def on_operation_results(body: list[AnyOperationResult]) -> None:
        await results.consume(broker.context.get_local("message"), body, orchestrator.handle_results)

    # The outbox relay writes these streams with plain XADDs; the declarations document them in AsyncAPI.
    broker.publisher(stream=OPERATION_COMMANDS, schema=RunOperationV1, title="operation-commands")
    broker.publisher(stream=OBJECT_EVENTS, schema=ObjectProgressedV1, title="object-events")


def reclaimers(redis: Redis, settings: OrchestratorSettings, orchestrator: Orchestrator) -> list[Reclaimer]:
    """Retry what an orchestrator instance left pending (it died, or a handler failed), from any instance."""
    commands: TypeAdapter[AnyObjectCommand] = TypeAdapter(AnyObjectCommand)
    results: TypeAdapter[AnyOperationResult] = TypeAdapter(AnyOperationResult)

    async def command(body: bytes, _entry_id: str) -> None:
        await orchestrator.handle_command(commands.validate_json(body))

    async def result(body: bytes, _entry_id: str) -> None:
        await orchestrator.handle_result(results.validate_json(body))

    common = {
        "redis": redis,
        "group": ORCHESTRATOR_GROUP,
        "consumer": settings.instance_id,
        "idle_ms": settings.claim_idle_ms,
        "max_deliveries": settings.max_deliveries,
        "maxlen": settings.stream_maxlen,
        "ready": orchestrator.database_ready,
    }
    return [
        Reclaimer(stream=OBJECT_COMMANDS, handler=command, **common),  # type: ignore[arg-type]
        Reclaimer(stream=OPERATION_RESULTS, handler=result, **common),  # type: ignore[arg-type]
    ]
