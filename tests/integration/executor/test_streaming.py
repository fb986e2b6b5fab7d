"""Large sources streamed from S3 through OperationRunner: chained operations, plugins, and bounded memory.

Expected figures are computed here, from the generated values, independently of the code under test.
"""

import csv
import hashlib
import io
import statistics
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import orjson
import pytest
from types_aiobotocore_s3 import S3Client

from libs.common.events import RunOperationV1
from services.executor.data import DataFormat
from services.executor.service import OperationRunner
from tests.integration.executor._s3 import command, completed_of, following, read, read_json, upload

CITIES = ["Oslo", "Lima", "Pune", "Accra", "Quito", "Hanoi", "Perth", "Turin", "Zürich", "Kraków", "東京"]
STEPS: list[dict[str, Any]] = [
    {"op": "cast", "types": {"value": "int"}},
    {"op": "filter", "expression": "value < `600`"},
    {"op": "drop", "fields": ["note"]},
]


def person(i: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": i,
        "group": f"g{i % 50}",
        "value": (i * 7919) % 1000,
        "city": CITIES[(i * 31) % len(CITIES)],
        "note": "x" * (i % 40),
    }
    if i % 3:
        record["email"] = f"user{i}@example.org"
    return record


@dataclass
class Expected:
    """Figures of the records STEPS keep, computed from the generated values."""

    values: list[int] = field(default_factory=list)
    groups: Counter[str] = field(default_factory=Counter)
    cities: Counter[str] = field(default_factory=Counter)
    emails: int = 0

    def add(self, record: dict[str, Any]) -> None:
        if record["value"] < 600:
            self.values.append(record["value"])
            self.groups[record["group"]] += 1
            self.cities[record["city"]] += 1
            self.emails += "email" in record


def generate(fmt: DataFormat, count: int) -> tuple[bytes, Expected]:
    expected = Expected()
    records = (person(i) for i in range(count))
    if fmt == "csv":
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=["id", "group", "value", "city", "note", "email"])
        writer.writeheader()
        for record in records:
            expected.add(record)
            writer.writerow(record)
        return buffer.getvalue().encode(), expected
    parts = []
    for record in records:
        expected.add(record)
        parts.append(orjson.dumps(record))
    if fmt == "ndjson":
        return b"\n".join(parts) + b"\n", expected
    return b"[" + b",\n".join(parts) + b"]", expected


async def run_ok(runner: OperationRunner, s3: S3Client, cmd: RunOperationV1) -> tuple[Any, Any]:
    """Runs the command; returns the completed event and the artifact it stored."""
    done = completed_of(await runner.run(cmd))
    return done, await read_json(s3, done.s3_url)


@pytest.mark.parametrize(("fmt", "count"), [("ndjson", 300_000), ("csv", 160_000), ("json", 100_000)])
async def test_a_large_source_streams_through_validate_transform_and_analyze(
    runner: OperationRunner, s3: S3Client, bucket: str, fmt: DataFormat, count: int
) -> None:
    body, expected = generate(fmt, count)
    assert len(body) > (25_000_000 if fmt == "ndjson" else 8_000_000)  # many chunks, batches and parts
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/people.{fmt}", body)
    first = command("validate", total=3, data_url=url, options={"required": ["id", "group"]})

    validated, validate = await run_ok(runner, s3, first)
    transform_cmd = following(first, validated, "transform", options={"steps": STEPS})
    transformed, transform = await run_ok(runner, s3, transform_cmd)
    analyze_cmd = following(transform_cmd, transformed, "analyze", options={"top": 3})
    _, analyze = await run_ok(runner, s3, analyze_cmd)

    assert validate["input"] == {
        "url": url,
        "kind": "s3",
        "format": fmt,
        "size_bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "record_count": count,
    }
    assert (validate["result"]["valid"], validate["result"]["record_count"]) == (True, count)

    kept = len(expected.values)
    assert (transform["result"]["records_in"], transform["result"]["records_out"]) == (count, kept)
    assert transformed.output_format == "ndjson"
    assert transformed.output_url is not None
    output, _ = await read(s3, transformed.output_url)
    assert transform["result"]["output"]["size_bytes"] == len(output)
    assert transform["result"]["output"]["sha256"] == hashlib.sha256(output).hexdigest()
    assert output.count(b"\n") == kept
    first_out = {k: v for k, v in person(0).items() if k != "note"}
    if fmt == "csv":  # cells are strings (but the cast value), and an absent email an empty cell
        first_out = {k: v if k == "value" else str(v) for k, v in first_out.items()} | {"email": ""}
    assert orjson.loads(output[: output.index(b"\n")]) == first_out

    assert analyze["input"]["url"] == transformed.output_url
    assert analyze["input"]["record_count"] == kept
    result = analyze["result"]
    assert result["record_count"] == kept
    fields = result["fields"]
    assert "note" not in fields, "analyze saw the source, not transform's output"
    assert fields["value"]["numeric"] == {
        "count": kept,
        "min": min(expected.values),
        "max": max(expected.values),
        "mean": pytest.approx(statistics.fmean(expected.values), rel=1e-12),
        "stddev": pytest.approx(statistics.pstdev(expected.values), rel=1e-9),
        "sum": sum(expected.values),
    }
    assert fields["value"]["distinct"] == len(set(expected.values))
    assert (fields["group"]["distinct"], fields["group"]["distinct_exact"]) == (len(expected.groups), True)
    assert fields["city"]["string"]["top"] == [
        {"value": city, "count": n} for city, n in expected.cities.most_common(3)
    ]
    assert fields["city"]["string"]["top_exact"] is True
    assert fields["city"]["string"]["length"] == {
        "min": min(map(len, expected.cities)),
        "max": max(map(len, expected.cities)),
        "mean": pytest.approx(sum(len(c) * n for c, n in expected.cities.items()) / kept),
    }
    assert fields["id"]["distinct_exact"] is False
    assert abs(fields["id"]["distinct"] - kept) / kept < 0.03
    # CSV writes an absent email as an empty cell: a string, not a null.
    emails = kept if fmt == "csv" else expected.emails
    assert (fields["email"]["count"], fields["email"]["nulls"]) == (emails, kept - emails)


async def test_the_redact_plugin_runs_and_its_output_feeds_the_next_operation(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    count = 50_000
    body, _ = generate("ndjson", count)
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/people.ndjson", body)
    redact_cmd = command("redact", total=2, data_url=url, options={"fields": ["email", "city"], "replacement": "***"})

    redacted, redact = await run_ok(runner, s3, redact_cmd)

    assert redacted.output_url == f"s3://{bucket}/{redact_cmd.identifier}/redact_output.ndjson"
    assert redacted.output_format == "ndjson"
    assert redact["result"] == {"records_redacted": count}  # every record has a city
    assert redact["input"]["record_count"] == count
    analyze_cmd = following(redact_cmd, redacted, "analyze", options={"fields": ["email", "city", "id"]})
    _, analyze = await run_ok(runner, s3, analyze_cmd)
    fields = analyze["result"]["fields"]
    assert analyze["result"]["record_count"] == count
    emails = sum(1 for i in range(count) if "email" in person(i))
    assert fields["email"]["string"]["top"] == [{"value": "***", "count": emails}]
    assert fields["city"]["string"]["top"] == [{"value": "***", "count": count}]
    assert fields["id"]["numeric"]["sum"] == count * (count - 1) // 2


async def test_the_redact_plugin_refuses_options_without_fields(runner: OperationRunner) -> None:
    result = await runner.run(command("redact", payload=[{"a": 1}], options={"fields": []}))
    assert getattr(result, "error", "").startswith("invalid options:")


async def test_analyze_of_a_large_source_runs_in_bounded_memory(
    runner: OperationRunner, s3: S3Client, bucket: str
) -> None:
    # Records of ~600 bytes keep the allocation count (and so tracemalloc's overhead) low; their long texts
    # come from a small set, so the exact top-strings counter stays small as it should.
    texts = [f"{i:02d} " + "lorem ipsum dolor sit amet " * 20 for i in range(16)]
    count = 100_000
    body = b"".join(
        orjson.dumps({"id": i, "value": i % 997, "group": f"g{i % 20}", "text": texts[i % 16]}) + b"\n"
        for i in range(count)
    )
    assert len(body) > 55_000_000
    url = await upload(s3, bucket, f"sources/{uuid4().hex}/large.ndjson", body)
    size = len(body)
    del body

    assert not tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        result = completed_of(await runner.run(command("analyze", data_url=url)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 64 * 1024 * 1024, f"analyze of {size} bytes peaked at {peak / 1e6:.1f} MB"
    artifact = await read_json(s3, result.s3_url)
    assert artifact["input"]["size_bytes"] == size
    assert artifact["result"]["record_count"] == count
    assert artifact["result"]["fields"]["text"]["distinct"] == len(texts)
