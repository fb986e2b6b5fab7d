"""schemathesis against the live `/openapi.json`, with authentication on: no input gets a server error, and no
response contradicts the schema (every check of schemathesis, all four phases; schemathesis.toml says where
one check is off and why).

The seed is fixed so that CI is reproducible; `SCHEMATHESIS_SEED=random` (or a number) explores further.
The full report goes to var/schemathesis.txt; the summary is printed.
"""

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.local.stack import Stack
from tests.conftest import ROOT

MAX_EXAMPLES = 25
REPORT = ROOT / "var" / "schemathesis.txt"


def admin_key(stack: Stack) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "services.gateway.keys", "create", "--tenant", "default", "--scopes", "admin"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": stack.settings.database_url},
        capture_output=True,
        text=True,
        check=True,
    )
    return next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("key:"))


def summary(output: str) -> str:
    """The figures of a run: operations tested, test cases generated, failures."""
    operations = re.search(r"Tested: (\d+)", output)
    cases = re.search(r"(\d+) generated, (.*)", output)
    return (
        f"schemathesis: {operations.group(1) if operations else '?'} API operations tested, "
        f"{cases.group(1) if cases else '?'} test cases generated ({cases.group(2) if cases else '?'})"
    )


def test_no_input_breaks_the_api_or_its_schema(
    stack_factory: Callable[..., Stack], capsys: pytest.CaptureFixture[str]
) -> None:
    stack = stack_factory(
        "schemathesis", auth=True, rate_limit_per_minute=1_000_000, rate_limit_anonymous_per_minute=1_000_000
    )
    key = admin_key(stack)
    seed = os.environ.get("SCHEMATHESIS_SEED", "20261129")
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{stack.base_url}/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--header",
        f"Authorization: Bearer {key}",
        "--no-color",
        *([] if seed == "random" else ["--seed", seed]),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    output = result.stdout + result.stderr
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(output.replace(key, "[key]"))
    line = summary(output)
    with capsys.disabled():
        print(  # noqa: T201 - the figures belong in CI's output
            f"\n{line}; seed {seed}; report {REPORT.relative_to(ROOT)}"
        )
    assert result.returncode == 0, f"{line}\n{output[-6000:]}"
