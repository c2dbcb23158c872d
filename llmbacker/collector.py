"""Python's cyclic garbage collector, tuned for a server holding thousands of sockets (`GC_THRESHOLD`).

Measured with `make bench-load` (1,000 sockets, one turn of 100 tokens each):
with Python's default thresholds (700, 10, 10) the collector took ~14% of
daphne's CPU during the turns, most of it in full collections, each of which
walks every object of every open socket (~0.2 s each, one every ~2 s). Two
changes bring that to ~3%:

- The heap built at start-up (Django, the URL conf, the models: ~130,000
  objects) is moved out of the collector's sight once (`gc.freeze`): it lives
  as long as the process and would be walked by every full collection.
- The youngest generation is collected after GC_THRESHOLD allocations
  instead of 700. Most objects of a frame (its dicts, the sent bytes) are
  freed by reference counting long before that, so fewer short-lived ones
  are promoted, and full collections become rare. Reference cycles are still
  collected: a young collection costs a few milliseconds at most.
"""

import gc

from django.conf import settings


def collector_tune() -> None:
    """Freeze the start-up heap and set the youngest generation's threshold (GC_THRESHOLD; 0 leaves Python's)."""
    gc.collect()
    gc.freeze()
    threshold = settings.GC_THRESHOLD
    if threshold > 0:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(threshold, older, oldest)
