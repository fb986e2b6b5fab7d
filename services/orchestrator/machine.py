"""The object lifecycle of SPEC §3: states, transitions and nothing else (no I/O), so it runs on the sync engine."""

from statemachine import State, StateMachine


class ObjectMachine(StateMachine):
    # StateMachine, not StateChart: at 3.2 a StateChart silently ignores an event with no transition from the
    # current state, and we need TransitionNotAllowed so that an illegal request is refused (409), never dropped.
    pending = State(initial=True)
    queued = State()
    processing = State()
    completed = State(final=True)
    failed = State()
    cancelled = State(final=True)

    enqueue = pending.to(queued)
    retry = failed.to(queued)
    start = queued.to(processing)
    complete = processing.to(completed)
    fail = processing.to(failed)
    cancel = pending.to(cancelled) | queued.to(cancelled) | processing.to(cancelled)
