"""Streaming readers: an object's data as batches of records, read from S3 in chunks, in bounded memory.

JSON arrays, NDJSON and CSV stream record by record, whatever their size. A JSON document that is not an
array (one object) is one record and is read whole, up to `max_document_bytes`. The raw bytes are counted
and hashed (SHA-256) as they pass, so checksums cost no second read.
"""

import asyncio
import codecs
import csv
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import ijson
import orjson
from pydantic import JsonValue

from services.executor.data import DataError, DataFormat

BATCH_BYTES = 1024 * 1024
"""Records are handed to operations in batches of about this much input."""

_BOM = b"\xef\xbb\xbf"


class ByteStream(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...


@dataclass
class InputStats:
    size_bytes: int = 0
    sha256: str = ""
    record_count: int = 0
    is_document: bool = False
    _hash: "hashlib._Hash" = field(default_factory=hashlib.sha256, repr=False)

    def feed(self, chunk: bytes) -> None:
        self.size_bytes += len(chunk)
        self._hash.update(chunk)

    def finish(self) -> None:
        self.sha256 = self._hash.hexdigest()


class RecordStream:
    """One pass over an object's data. Iterate `batches()` once; `stats` is complete after it."""

    def __init__(self, chunks: AsyncIterator[bytes], fmt: DataFormat, max_document_bytes: int) -> None:
        self.format = fmt
        self.stats = InputStats()
        self._chunks = chunks
        self._max_document_bytes = max_document_bytes

    async def batches(self) -> AsyncIterator[list[JsonValue]]:
        readers = {"ndjson": self._ndjson, "csv": self._csv, "json": self._json}
        async for batch in readers[self.format]():
            self.stats.record_count += len(batch)
            yield batch
            # Reads that find their data already buffered never suspend: give the event loop (and the heartbeat
            # that keeps this operation owned) a turn after every batch.
            await asyncio.sleep(0)
        self.stats.finish()

    async def _counted(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            self.stats.feed(chunk)
            yield chunk

    async def _ndjson(self) -> AsyncIterator[list[JsonValue]]:
        rest = b""
        line_number = 0
        async for chunk in self._counted():
            data = rest + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1 :]
            batch, line_number = _parse_lines(data[:cut], line_number)
            if batch:
                yield batch
        if rest.strip():
            batch, _ = _parse_lines(rest, line_number)
            yield batch

    async def _csv(self) -> AsyncIterator[list[JsonValue]]:
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        header: list[str] | None = None
        text = ""
        async for chunk in self._counted():
            try:
                text += decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"CSV is not UTF-8 text near byte {self.stats.size_bytes - len(chunk) + exc.start}"
                ) from None
            cut = _last_record_end(text)
            if cut < 0:
                continue
            complete, text = text[: cut + 1], text[cut + 1 :]
            header, batch = _parse_csv(complete, header)
            if batch:
                yield batch
        text += decoder.decode(b"", final=True)
        if text.strip():
            _, batch = _parse_csv(text, header)
            if batch:
                yield batch

    async def _json(self) -> AsyncIterator[list[JsonValue]]:
        chunks = self._counted()
        head = b""
        async for chunk in chunks:
            head += chunk
            # Read on while the head is blank or could still be a byte order mark split across chunks.
            if head.removeprefix(_BOM).strip() and not _BOM.startswith(head):
                break
        head = head.removeprefix(_BOM)  # neither ijson nor orjson accepts one
        if not head.lstrip().startswith(b"["):
            yield [await self._whole_document(head, chunks)]
            return
        reader = _AsyncReader(head, chunks)
        batch: list[JsonValue] = []
        batch_start = 0
        try:
            async for item in ijson.items_async(reader, "item", use_float=True):
                batch.append(item)
                if reader.consumed - batch_start >= BATCH_BYTES:
                    yield batch
                    batch, batch_start = [], reader.consumed
        except ijson.JSONError as exc:
            raise DataError(f"data is not valid JSON: {exc}") from None
        if batch:
            yield batch

    async def _whole_document(self, head: bytes, chunks: AsyncIterator[bytes]) -> JsonValue:
        parts = [head]
        size = len(head)
        async for chunk in chunks:
            size += len(chunk)
            if size > self._max_document_bytes:
                break
            parts.append(chunk)
        if size > self._max_document_bytes:  # also when the first chunk alone is over the limit
            raise DataError(
                f"a JSON document that is not an array is read whole, and this one is over "
                f"{self._max_document_bytes} bytes; give large data as an array, NDJSON or CSV"
            )
        self.stats.is_document = True
        try:
            value: JsonValue = orjson.loads(b"".join(parts))
        except orjson.JSONDecodeError as exc:
            raise DataError(f"data is not valid JSON: {exc}") from None
        return value


class _AsyncReader:
    """The async file-like object ijson reads from, fed by our (counted) chunks."""

    def __init__(self, head: bytes, chunks: AsyncIterator[bytes]) -> None:
        self._buffer = head
        self._chunks = chunks
        self.consumed = 0

    async def read(self, size: int = -1) -> bytes:
        if not self._buffer:
            self._buffer = await anext(self._chunks, b"")
        if size < 0 or size >= len(self._buffer):
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        self.consumed += len(data)
        return data


def _parse_lines(block: bytes, line_number: int) -> tuple[list[JsonValue], int]:
    if line_number == 0:  # the first block: the data's start, where a byte order mark may be
        block = block.removeprefix(_BOM)
    lines = [line for line in block.split(b"\n") if line.strip()]
    count = block.count(b"\n") + 1
    try:
        # One parse of "[[line],[line],...]" is several times faster than a parse per line. Each line is wrapped in
        # its own brackets, so a value split over lines, or two values on one line, cannot pass for one per line.
        wrapped: list[list[JsonValue]] = orjson.loads(b"[[" + b"],[".join(lines) + b"]]") if lines else []
        batch: list[JsonValue] = [item[0] for item in wrapped if len(item) == 1]
    except orjson.JSONDecodeError:
        batch = []
    if len(batch) != len(lines):  # a bad line somewhere: find it, line by line
        batch = []
        for number, line in enumerate(block.split(b"\n"), start=line_number + 1):
            if line.strip():
                try:
                    batch.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise DataError(f"NDJSON line {number} is not valid JSON: {exc}") from None
    return batch, line_number + count


def _last_record_end(text: str) -> int:
    """Index of the last newline that ends a CSV record (not one inside a quoted field), or -1."""
    cut = text.rfind("\n")
    quotes = text.count('"', 0, cut) if cut >= 0 else 0
    while cut >= 0 and quotes % 2:
        # Quotes before the previous newline, without counting from the start again: linear, not quadratic.
        previous = text.rfind("\n", 0, cut)
        quotes -= text.count('"', previous + 1, cut)
        cut = previous
    return cut


def _parse_csv(text: str, header: list[str] | None) -> tuple[list[str] | None, list[JsonValue]]:
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        if header is None:
            header = next(rows, None)
            if header is None:
                return None, []
        width = len(header)
        batch: list[JsonValue] = []
        for row in rows:
            if len(row) > width:
                raise DataError(f"a CSV row has {len(row)} cells but the header has {width}: {row[:5]!r}")
            if row:
                batch.append(dict(zip(header, row + [""] * (width - len(row)), strict=True)))
    except csv.Error as exc:
        raise DataError(f"CSV cannot be read: {exc}") from None
    return header, batch


async def chunks_of(data: bytes, size: int = BATCH_BYTES) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
