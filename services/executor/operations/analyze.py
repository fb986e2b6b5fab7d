"""analyze: per-field statistics in one pass and bounded memory.

For every field: count, nulls, types, distinct values (exact up to 10,000, then a HyperLogLog estimate with
about 0.8 % standard error, flagged `distinct_exact: false`), numeric count/min/max/mean/stddev/sum (merged
batch by batch with Chan's formula, so no value is kept), and for strings the top values (exact until 50,000
different values, then the most frequent 10,000 are kept and counts are lower bounds, flagged
`top_exact: false`) and length figures.
"""

import math
from collections import Counter
from dataclasses import dataclass, field

import orjson
from pydantic import JsonValue

from libs.common.options import AnalyzeOptions
from services.executor.operations._fields import TYPE_NAMES, columns
from services.executor.operations._sketch import DistinctCounter
from services.executor.operations.base import OperationContext, OperationOutcome
from services.executor.records import RecordStream

TOP_LIMIT = 50_000
TOP_KEEP = 10_000


_SAFE_MAGNITUDE = 2.0**400
"""Below this, squares and sums of a batch cannot overflow a float."""


@dataclass
class _Numbers:
    count: int = 0
    scale: float = 1.0
    """mean, m2 and partial_sums are kept in units of this power of two (1 unless values near the float limit
    are seen), so that squares and sums of such values cannot overflow."""
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    partial_sums: list[float] = field(default_factory=list)

    def add(self, values: list[int | float]) -> None:
        lowest, highest = min(values), max(values)
        largest = max(highest, -lowest)
        if largest > self.scale * _SAFE_MAGNITUDE:
            scale = math.ldexp(1.0, math.frexp(largest)[1] - 1)
            ratio = self.scale / scale
            self.mean *= ratio
            self.m2 *= ratio * ratio
            self.partial_sums = [s * ratio for s in self.partial_sums]
            self.scale = scale
        if self.scale != 1.0:
            values = [v / self.scale for v in values]
        n = len(values)
        batch_sum = math.fsum(values)
        batch_mean = batch_sum / n
        batch_m2 = math.fsum((v - batch_mean) ** 2 for v in values)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total
        self.minimum = min(self.minimum, lowest)
        self.maximum = max(self.maximum, highest)
        self.partial_sums.append(batch_sum)

    def report(self) -> dict[str, JsonValue] | None:
        if not self.count:
            return None
        total = math.fsum(self.partial_sums) * self.scale
        mean = self.mean * self.scale
        stddev = math.sqrt(self.m2 / self.count) * self.scale
        return {
            "count": self.count,
            "min": self.minimum,
            "max": self.maximum,
            "mean": mean if math.isfinite(mean) else None,
            "stddev": stddev if math.isfinite(stddev) else None,
            "sum": total if math.isfinite(total) else None,
        }


@dataclass
class _Strings:
    count: int = 0
    length_min: int | None = None
    length_max: int = 0
    length_sum: int = 0
    top: Counter[str] = field(default_factory=Counter)
    top_exact: bool = True

    def add(self, values: list[str]) -> None:
        lengths = list(map(len, values))
        self.count += len(values)
        self.length_sum += sum(lengths)
        self.length_max = max(self.length_max, max(lengths))
        shortest = min(lengths)
        self.length_min = shortest if self.length_min is None else min(self.length_min, shortest)
        self.top.update(values)
        if len(self.top) > TOP_LIMIT:
            self.top = Counter(dict(self.top.most_common(TOP_KEEP)))
            self.top_exact = False

    def report(self, top: int) -> dict[str, JsonValue] | None:
        if not self.count:
            return None
        return {
            "count": self.count,
            "top": [{"value": value, "count": count} for value, count in self.top.most_common(top)],
            "top_exact": self.top_exact,
            "length": {"min": self.length_min, "max": self.length_max, "mean": self.length_sum / self.count},
        }


@dataclass
class _Field:
    count: int = 0
    types: Counter[str] = field(default_factory=Counter)
    distinct: DistinctCounter = field(default_factory=DistinctCounter)
    numbers: _Numbers = field(default_factory=_Numbers)
    strings: _Strings = field(default_factory=_Strings)

    def add(self, values: list[JsonValue]) -> None:
        present: list[JsonValue] = [v for v in values if v is not None]
        if not present:
            return
        self.count += len(present)
        # Count types at C speed; most columns hold a single type, so values are split by type only when mixed.
        kinds = Counter(map(type, present))
        self.types.update({TYPE_NAMES[kind]: n for kind, n in kinds.items()})
        by_kind: dict[type, list[JsonValue]] = {}
        if len(kinds) == 1:
            by_kind[next(iter(kinds))] = present
        else:
            for value in present:
                by_kind.setdefault(type(value), []).append(value)
        hashables: list[object] = []
        for kind, group in by_kind.items():
            if kind in (str, int, float):
                hashables.extend(group)
            elif kind is bool:  # tagged: in a Python set True == 1, yet they are distinct JSON values
                hashables.extend((True, value) for value in group)
            else:  # objects and arrays, by their canonical JSON
                hashables.extend(orjson.dumps(value, option=orjson.OPT_SORT_KEYS) for value in group)
        numbers = by_kind.get(int, []) + by_kind.get(float, [])
        strings = by_kind.get(str, [])
        self.distinct.add_many(hashables)
        if numbers:
            self.numbers.add(numbers)  # type: ignore[arg-type]
        if strings:
            self.strings.add(strings)  # type: ignore[arg-type]


async def run(records: RecordStream, ctx: OperationContext[AnalyzeOptions]) -> OperationOutcome:
    wanted = set(ctx.options.fields) if ctx.options.fields else None
    fields: dict[str, _Field] = {name: _Field() for name in ctx.options.fields or ()}
    non_objects = 0
    async for batch in records.batches():
        for name, values in columns(batch, wanted).items():
            stats = fields.get(name)
            if stats is None:
                stats = fields[name] = _Field()
            stats.add(values)
        non_objects += sum(not isinstance(r, dict) for r in batch)
    total = records.stats.record_count
    report: dict[str, JsonValue] = {
        name: {
            "count": stats.count,
            "nulls": total - stats.count,
            "distinct": min(stats.distinct.count(), stats.count),  # an estimate never above the count
            "distinct_exact": stats.distinct.is_exact,
            "types": dict(stats.types),
            "numeric": stats.numbers.report(),
            "string": stats.strings.report(ctx.options.top),
        }
        for name, stats in fields.items()
    }
    return OperationOutcome(
        result={
            "record_count": total,
            "field_count": len(report),
            "fields": report,
            "non_object_records": non_objects,
        }
    )
