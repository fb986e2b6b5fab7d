"""_sketch.DistinctCounter: exact up to EXACT_LIMIT values, then a HyperLogLog estimate."""

from collections.abc import Sequence

import pytest

from services.executor.operations._sketch import EXACT_LIMIT, DistinctCounter


def counted(*batches: Sequence[object]) -> DistinctCounter:
    counter = DistinctCounter()
    for batch in batches:
        counter.add_many(list(batch))
    return counter


def test_counts_exactly_up_to_the_limit() -> None:
    counter = counted(list(range(EXACT_LIMIT // 2)), list(range(EXACT_LIMIT // 4, EXACT_LIMIT)))
    assert counter.is_exact
    assert counter.count() == EXACT_LIMIT


def test_counts_nothing_when_nothing_was_added() -> None:
    assert counted().count() == 0
    assert counted([]).count() == 0


def test_counts_values_that_python_holds_equal_once() -> None:
    # 1 == 1.0 in a set; analyze tags booleans before counting, since true and 1 differ in JSON.
    assert counted([1, 1.0, "1", "a", "a", (True, 1), (False, 1)]).count() == 5


@pytest.mark.parametrize("kind", ["int", "str"])
def test_estimates_within_three_percent_above_the_limit(kind: str) -> None:
    total = 200_000
    values: list[object] = list(range(total)) if kind == "int" else [f"user-{i}@example.org" for i in range(total)]
    counter = counted(*(values[start : start + 7_000] for start in range(0, total, 7_000)))
    assert not counter.is_exact
    assert abs(counter.count() - total) / total < 0.03


def test_estimates_just_above_the_limit_closely() -> None:
    # Where the exact set is folded into the sketch, linear counting keeps small counts accurate.
    counter = counted(list(range(EXACT_LIMIT + 1)))
    assert not counter.is_exact
    assert abs(counter.count() - (EXACT_LIMIT + 1)) / EXACT_LIMIT < 0.03


def test_duplicates_do_not_inflate_the_estimate() -> None:
    distinct = 50_000
    once = counted(list(range(distinct)))
    repeated = counted(*(list(range(distinct)) for _ in range(5)), list(range(0, distinct, 3)))
    assert not repeated.is_exact
    assert repeated.count() == once.count()  # the same registers: a value seen again changes nothing
    assert abs(repeated.count() - distinct) / distinct < 0.03


def test_duplicates_do_not_leave_exact_counting() -> None:
    counter = counted(*([1, 2, 3] * 10_000 for _ in range(10)))
    assert counter.is_exact
    assert counter.count() == 3
