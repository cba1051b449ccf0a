"""The simulation's frozen heap: objects alive at the start skip full collections, and come back after."""

from __future__ import annotations

import gc

from simulations.heap import frozen_heap


def test_objects_alive_at_the_start_are_frozen_for_the_block_only() -> None:
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before
        created = [[]]  # made inside the block: collected as usual
        assert gc.is_tracked(created)
    assert gc.get_freeze_count() == before
