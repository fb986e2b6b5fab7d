"""analyze: per-field statistics: counts, nulls, distinct values, numeric moments, top strings, lengths."""

import math
from collections import Counter
from collections.abc import Sequence

from pydantic import JsonValue

from libs.common.options import AnalyzeOptions
from services.executor.data import Dataset
from services.executor.operations._fields import field_values, json_type
from services.executor.operations.base import OperationContext, OperationOutcome


def _numbers(values: Sequence[JsonValue]) -> dict[str, JsonValue] | None:
    nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not nums:
        return None
    # Computed on the values divided by a power of two near the largest magnitude: only exponents change, so the
    # results are the same, but squares and sums of values near the float limit cannot overflow.
    scale = math.ldexp(1.0, math.frexp(max(abs(n) for n in nums))[1] - 1)
    scaled = [n / scale for n in nums]
    mean = math.fsum(scaled) / len(nums)
    variance = math.fsum((n - mean) ** 2 for n in scaled) / len(nums)
    total = math.fsum(scaled) * scale
    return {
        "count": len(nums),
        "min": min(nums),
        "max": max(nums),
        "mean": mean * scale,
        "stddev": math.sqrt(variance) * scale,
        "sum": total if math.isfinite(total) else None,
    }


def _strings(values: Sequence[JsonValue], top: int) -> dict[str, JsonValue] | None:
    strings = [v for v in values if isinstance(v, str)]
    if not strings:
        return None
    lengths = [len(s) for s in strings]
    return {
        "count": len(strings),
        "top": [{"value": value, "count": count} for value, count in Counter(strings).most_common(top)],
        "length": {"min": min(lengths), "max": max(lengths), "mean": math.fsum(lengths) / len(lengths)},
    }


def _hashable(value: JsonValue) -> object:
    # Tagged with bool-ness: in a Python set True == 1 and False == 0, yet they are distinct JSON values.
    return (isinstance(value, bool), value) if not isinstance(value, dict | list) else repr(value)


async def run(data: Dataset, ctx: OperationContext[AnalyzeOptions]) -> OperationOutcome:
    names = ctx.options.fields or data.field_names()
    fields: dict[str, JsonValue] = {}
    for name in names:
        values = field_values(data.records, name)
        present = [v for v in values if v is not None]
        fields[name] = {
            "count": len(present),
            "nulls": len(data.records) - len(present),
            "distinct": len({_hashable(v) for v in present}),
            "types": dict(Counter(json_type(v) for v in present)),
            "numeric": _numbers(present),
            "string": _strings(present, ctx.options.top),
        }
    scalars = [r for r in data.records if not isinstance(r, dict)]
    return OperationOutcome(
        result={
            "record_count": len(data.records),
            "field_count": len(fields),
            "fields": fields,
            "non_object_records": len(scalars),
            "distinct_method": "exact",
        }
    )
