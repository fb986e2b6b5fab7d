"""A smoke run of the benchmark (bench.compare) with tiny figures, so the one command of issue 6 cannot rot.

It asserts that every part of the run completes and reports positive figures, never how fast anything is.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, required_env

SYSTEMS = ("ours", "celery_chain", "celery_object", "dramatiq_object")


@pytest.mark.timeout(600)
def test_compare_runs_every_system_and_writes_its_figures(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    argv = [
        *(sys.executable, "-m", "bench.compare"),
        *("--objects", "5", "--singles", "2", "--raised-cap", "6", "--raised-executors", "2"),
        *("--sse-subscribers", "50", "--offered-rate", "50", "--offered-seconds", "1", "--ceiling-seconds", "1"),
        *("--put-seconds", "1", "--database-url", required_env("TEST_DATABASE_URL")),
        *("--redis-url", required_env("TEST_REDIS_URL"), "--json", str(report_path)),
        *("--log-dir", str(tmp_path / "logs")),
    ]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=560, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ours / peer" in result.stdout

    report = json.loads(report_path.read_text())
    assert report["machine"]["cores"] > 0
    assert set(report["systems"]) == set(SYSTEMS)
    for name, figures in report["systems"].items():
        assert figures["objects"] == 5, name
        assert figures["failed"] == 0, name
        for key in ("submissions_per_s", "objects_per_s", "latency_p50_s", "latency_p99_s", "cpu_ms_per_object_system"):
            assert figures[key] > 0, (name, key)
        assert figures["single"]["p50_ms"] > 0, name
    assert set(report["ratios"]) == set(SYSTEMS) - {"ours"}
    assert report["s3_put_ceiling"]["puts_per_s"] > 0
    assert report["raised"]["objects_per_s"] > 0
    assert report["raised"]["failed"] == 0
    assert report["submit_path"]["offered"]["accepted"] > 0
    assert report["submit_path"]["ceiling"]["accepted_per_s"] > 0
    assert report["sse"]["held"] == report["sse"]["received"] == 50
