"""The suite's result table: one row per fault, printed by each test and by the terminal summary."""

from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

REPORT_PATH: Path = ROOT / "var" / "fault-report.txt"


@dataclass
class Row:
    fault: str
    objects: int
    """Accepted objects (a 2xx on POST, or an ambiguous POST whose object turned out to exist)."""
    lost: int
    """Accepted objects that do not exist at the end."""
    stuck: int
    """Objects not in a terminal state at the deadline."""
    duplicated: int
    """Operation artifacts written more than once (more than one S3 version of `{identifier}/{op}_result.json`)."""
    failed: int
    """Objects that ended `failed` although their data is valid."""
    recovery_seconds: float | None
    """From the start of the fault until every object in flight at that moment was terminal (or a probe completed)."""
    passed: bool
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What happened, for the reader: answers of the gateway, samples of the cap, what was killed."""
    seconds: float = 0.0
    """Wall time of the whole scenario."""


ROWS: list[Row] = []

HEADERS = ("fault", "objects", "lost", "stuck", "duplicated", "failed", "recovery", "result", "took")


def _cells(row: Row) -> tuple[str, ...]:
    recovery = "-" if row.recovery_seconds is None else f"{row.recovery_seconds:.1f} s"
    return (
        row.fault,
        str(row.objects),
        str(row.lost),
        str(row.stuck),
        str(row.duplicated),
        str(row.failed),
        recovery,
        "pass" if row.passed else "FAIL",
        f"{row.seconds:.0f} s",
    )


def render(rows: list[Row], violations: bool = True) -> str:
    table = [HEADERS, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    out = [line(HEADERS), "|" + "|".join("-" * (width + 2) for width in widths) + "|"]
    out.extend(line(cells) for cells in table[1:])
    if violations:
        for row in rows:
            out.extend(f"  {row.fault}: {note}" for note in row.notes)
            out.extend(f"  {row.fault}: VIOLATION {violation}" for violation in row.violations[:20])
            if len(row.violations) > 20:
                out.append(f"  {row.fault}: ... and {len(row.violations) - 20} more violations")
    out.append(
        "recovery: from the start of the fault until every object in flight at that moment reached a terminal "
        "state (or, with none in flight, until a fresh probe object completed)"
    )
    return "\n".join(out)


def record(row: Row) -> str:
    ROWS.append(row)
    text = render(ROWS)
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(text + "\n")
    return text
