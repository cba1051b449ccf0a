"""The simulation's frozen heap: objects alive at the start skip full collections, and come back after."""

from __future__ import annotations

import gc

from simulations.heap import frozen_heap


def test_objects_alive_at_the_start_are_frozen_for_the_block_only() -> None:
    gc.unfreeze()  # start from a heap nothing froze (a serving test in this worker may have frozen it)
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        created = [[]]  # made inside the block: collected as usual
        assert gc.is_tracked(created)
    assert gc.get_freeze_count() == 0


def test_a_heap_frozen_by_someone_else_is_left_as_it_is() -> None:
    gc.unfreeze()
    gc.freeze()  # as serving.worker.settle_heap does at start-up
    before = gc.get_freeze_count()
    try:
        with frozen_heap():
            assert gc.get_freeze_count() == before
        assert gc.get_freeze_count() == before  # not undone by the block's end
    finally:
        gc.unfreeze()
