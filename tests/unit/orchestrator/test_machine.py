"""ObjectMachine: every (state, event) pair either moves to the one state SPEC §3 allows or is refused."""

import inspect
from dataclasses import dataclass

import pytest
from statemachine.exceptions import TransitionNotAllowed

from libs.common.db.models import ProcessingObject
from services.orchestrator.machine import ObjectMachine, next_state

ALLOWED: dict[tuple[str, str], str] = {
    ("pending", "enqueue"): "queued",
    ("pending", "cancel"): "cancelled",
    ("queued", "start"): "processing",
    ("queued", "cancel"): "cancelled",
    ("processing", "complete"): "completed",
    ("processing", "fail"): "failed",
    ("processing", "cancel"): "cancelled",
    ("failed", "retry"): "queued",
}

STATES = [state.id for state in ObjectMachine.states]
EVENTS = [event.id for event in ObjectMachine().events]
# Derived from the machine, so an event or state added there without a row in ALLOWED is checked as refused.
REFUSED = [(state, event) for state in STATES for event in EVENTS if (state, event) not in ALLOWED]


@dataclass
class Row:
    state: str | None


def machine_for(row: Row) -> ObjectMachine:
    return ObjectMachine(model=row, state_field="state")


def test_states_and_events_match_the_spec() -> None:
    assert set(STATES) == {"pending", "queued", "processing", "completed", "failed", "cancelled"}
    assert set(EVENTS) == {"enqueue", "retry", "start", "complete", "fail", "cancel"}


def test_initial_state_is_pending_when_the_model_has_none() -> None:
    row = Row(state=None)
    machine_for(row)
    assert row.state == "pending"


@pytest.mark.parametrize(("source", "event", "target"), [(s, e, t) for (s, e), t in ALLOWED.items()])
def test_transition_moves_model_when_allowed(source: str, event: str, target: str) -> None:
    row = Row(state=source)
    machine_for(row).send(event)
    assert row.state == target


@pytest.mark.parametrize(("source", "event"), REFUSED)
def test_transition_is_refused_when_not_allowed(source: str, event: str) -> None:
    row = Row(state=source)
    machine = machine_for(row)
    with pytest.raises(TransitionNotAllowed):
        machine.send(event)
    assert row.state == source


def test_refused_pairs_cover_every_other_pair() -> None:
    assert len(ALLOWED) + len(REFUSED) == len(STATES) * len(EVENTS)
    assert all(pair[0] in STATES and pair[1] in EVENTS for pair in ALLOWED)


@pytest.mark.parametrize("final", ["completed", "cancelled"])
def test_final_state_refuses_every_event(final: str) -> None:
    for event in EVENTS:
        row = Row(state=final)
        with pytest.raises(TransitionNotAllowed):
            machine_for(row).send(event)
        assert row.state == final


@pytest.mark.parametrize(("source", "event", "target"), [(s, e, t) for (s, e), t in ALLOWED.items()])
def test_next_state_is_the_machine_s_answer(source: str, event: str, target: str) -> None:
    assert next_state(source, event) == target
    assert next_state(source, event) == target  # cached


@pytest.mark.parametrize(("source", "event"), REFUSED)
def test_next_state_refuses_what_the_machine_refuses_every_time(source: str, event: str) -> None:
    for _ in range(2):  # a refusal is never cached as an answer
        with pytest.raises(TransitionNotAllowed):
            next_state(source, event)


def test_the_machine_has_no_guards_or_actions_so_its_answers_may_be_cached() -> None:
    # next_state caches (state, event) -> state. A method on the machine (a guard, an action, a listener) could make
    # the answer depend on more than that: if one is added, next_state must stop caching.
    methods = [name for name, value in vars(ObjectMachine).items() if inspect.isfunction(value)]
    assert methods == []
    transitions = [transition for state in ObjectMachine.states for transition in state.transitions]
    assert all(not list(t.cond) and not list(t.validators) for t in transitions), "a guard or validator"
    # Callbacks named by convention (before_enqueue, on_enter_queued, ...) were looked up on the row too.
    hooks = [name for name in dir(ProcessingObject) if name.startswith(("before_", "on_", "after_"))]
    assert hooks == []
