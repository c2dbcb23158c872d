"""The garbage collector's tuning for daphne (llmbacker/collector.py)."""

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmbacker.collector import collector_tune

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def collector_restored():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_start_up_heap_is_frozen_and_the_young_threshold_set(settings, collector_restored):
    settings.GC_THRESHOLD = 12_345
    gc.set_threshold(700, 11, 12)
    gc.unfreeze()

    collector_tune()

    assert gc.get_freeze_count() > 10_000  # this test process's modules, Django's, the models
    assert gc.get_threshold() == (12_345, 11, 12)


def test_zero_keeps_pythons_thresholds(settings, collector_restored):
    settings.GC_THRESHOLD = 0
    gc.set_threshold(700, 10, 10)

    collector_tune()

    assert gc.get_threshold() == (700, 10, 10)


def test_loading_the_asgi_application_tunes_the_collector():
    """What daphne (and llmbacker.serve's processes) import: a fresh interpreter, the embedded default."""
    probe = "import gc, llmbacker.asgi; print(gc.get_threshold()[0], gc.get_freeze_count())"
    env = {**os.environ, "GC_THRESHOLD": "23456", "DJANGO_SETTINGS_MODULE": "llmbacker.settings"}
    for key in ("DATABASE_URL", "REDIS_URL"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    threshold, frozen = map(int, result.stdout.split()[-2:])
    assert threshold == 23456
    assert frozen > 10_000
