"""actors.startup.no_gc_while_starting: automatic collection is off inside, and after the block start-up's cycles
are freed, the survivors frozen and the collector's previous state restored (a nested block changes nothing).
freeze_imported_heap: what is alive at the call is out of later collections' sight."""

import gc
import weakref

from actors.startup import freeze_imported_heap, no_gc_while_starting


class Node:
    pass


def test_off_inside_then_collected_frozen_and_restored():
    assert gc.isenabled()
    try:
        with no_gc_while_starting():
            assert not gc.isenabled()
            with no_gc_while_starting():
                assert not gc.isenabled()
            assert not gc.isenabled()  # the inner block did not turn it back on
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
            dead = weakref.ref(a)
            del a, b
            kept = Node()
            assert dead() is not None  # no collection ran inside
        assert gc.isenabled()
        assert dead() is None  # collected at the end of the block
        assert gc.get_freeze_count() > 0 and gc.is_tracked(kept)
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with no_gc_while_starting():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_freeze_imported_heap_hides_what_is_alive_from_later_collections():
    """What exists at the call (garbage cycles included, by design) is out of every later gc.collect()'s sight;
    what is made after it is collected as usual."""
    before = gc.get_freeze_count()
    gc.disable()  # no automatic collection (another thread's allocations) may free the old cycle before the freeze
    a, b = Node(), Node()
    a.other, b.other = b, a
    old_cycle = weakref.ref(a)
    del a, b
    try:
        freeze_imported_heap()
        assert gc.get_freeze_count() > before
        c, d = Node(), Node()
        c.other, d.other = d, c
        new_cycle = weakref.ref(c)
        del c, d
        gc.collect()
        assert new_cycle() is None  # built after the freeze: collected
        assert old_cycle() is not None  # alive at the freeze: kept, not scanned
    finally:
        gc.unfreeze()
        gc.enable()
    gc.collect()
    assert old_cycle() is None  # unfrozen, it is ordinary garbage again
