"""``wattmix worker``'s garbage-collector settings (``streams.worker.tune_gc``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tune_gc_freezes_start_up_and_spaces_collections_out_but_keeps_collecting_cycles():
    # in a fresh interpreter: the settings are process-wide and must not leak into the test run
    code = """
import gc
from streams.worker import GC_THRESHOLDS, tune_gc
assert gc.get_threshold() == (700, 10, 10), gc.get_threshold()
tune_gc()
assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > 700
assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()  # modules, classes, the app
assert gc.isenabled()
class Node: pass
a, b = Node(), Node(); a.other, b.other = b, a        # a reference cycle made after start-up
import weakref; alive = weakref.ref(a); del a, b
gc.collect()
assert alive() is None, "a cycle made after tune_gc must still be collected"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
