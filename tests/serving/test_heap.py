"""The servers freeze their start-up heap: later collections never scan it again."""

from __future__ import annotations

import gc

from kfloop.serving.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def test_objects_alive_at_start_up_are_out_of_the_collectors_reach() -> None:
    before = _Node()  # tracked by the collector, alive across the freeze
    try:
        frozen = freeze_startup_heap()
        after = _Node()
        tracked = {id(o) for o in gc.get_objects()}
        # (not equal to get_freeze_count(): a frozen object can still be freed by its
        # reference count, which lowers the count)
        assert frozen > 0
        assert id(before) not in tracked  # frozen: no generation scans it
        assert id(after) in tracked  # what the server allocates later is collected as usual
        # Garbage made after the freeze is still collected.
        a, b = _Node(), _Node()
        a.peer, b.peer = b, a
        del a, b
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()
    assert id(before) in {id(o) for o in gc.get_objects()}
