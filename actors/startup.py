"""Start-up work of a process (imports, building a model or an engine) without Python's automatic garbage
collection: those millions of new long-lived objects make the collector run again and again over the whole heap
for nothing (importing vLLM: 5.4 s with it, 4.3 s without, 1486 young and 9 full collections; measured on this
machine kind). After the work, one full collection frees what start-up left in cycles, and `gc.freeze()` moves
the survivors out of the collector's sight for the rest of the process (vLLM freezes its own heap after start-up
for the same reason). Objects freed by reference counting are freed as always. A vLLM engine built in-process also
freezes the heap its imports left before it builds (`freeze_imported_heap`): those imports' cyclic garbage is then
kept, not collected.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def no_gc_while_starting() -> Iterator[None]:
    """Automatic collection off for the block, then collect, freeze, and restore the collector's previous state
    (nested blocks leave it off until the outermost one ends)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.collect()
            gc.freeze()
            gc.enable()


def freeze_imported_heap() -> None:
    """Call after importing vLLM, before building an in-process engine: every object alive now (mostly what the
    imports left) moves to the permanent generation, without a collection first. vLLM's `LLM(...)` calls
    `gc.collect()` itself five times while it builds (twice after loading the weights, three times when it freezes
    its own heap), each over the ~1M objects its imports leave; frozen first, they skip them (benchmarks/RESULTS.md,
    "Start-up and shutdown": the build 2.6-3.0 -> 1.0-1.1 s). Not collecting first keeps the imports' cyclic garbage
    for the process's life (RSS within 12 MB of collecting it there), where the collection would cost ~0.5 s."""
    gc.freeze()
