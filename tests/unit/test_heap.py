"""Once serving, the server's start-up objects are out of the garbage collector's sight and the
young generation is collected less often (credbroker.app.settle_heap)."""

from __future__ import annotations

import gc

from credbroker.app import GC_YOUNG_THRESHOLD, settle_heap


def test_settle_heap_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    alive = [object() for _ in range(10)]
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert not any(o is alive for o in gc.get_objects())  # frozen: no longer walked
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
