"""The garbage collector settings every service starts with."""

import subprocess
import sys

from libs.common.serve import GC_THRESHOLDS


def test_the_start_up_heap_is_frozen_and_collections_are_rarer() -> None:
    # In a process of its own: this one's collector is not the test's to change.
    script = (
        "import gc\n"
        "from libs.common.serve import tune_garbage_collector\n"
        "tune_garbage_collector()\n"
        "print(gc.get_freeze_count() > 1000, *gc.get_threshold())\n"
    )
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert printed.split() == ["True", *map(str, GC_THRESHOLDS)]
