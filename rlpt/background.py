"""Run-directory writes off the driver's step path: one thread runs them in submission order.

Why: the metrics row (JSONL + fsync + TensorBoard), the step's rollouts parquet file and a checkpoint's final
rename are bookkeeping; the next step does not need them on disk. The driver queues them (`submit`) and goes on.

Guarantees:
- Order: jobs run one at a time, in the order submitted, so a checkpoint renamed by a later job never exists
  without the rows and files submitted before it.
- Errors are never swallowed: the first failing job's exception is raised (as BackgroundWriteError, chained) by the
  next `submit` or `flush`, or by `close` when nothing has raised it yet. Jobs queued after a failure are skipped,
  so nothing is written past a gap (e.g. no checkpoint is completed after its step's rows failed to write).
- `flush()` returns once everything submitted so far is done; `close()` flushes, then stops the thread.
- Bounded: at most `max_pending` jobs wait; `submit` blocks beyond that rather than letting memory grow.
- A crash of the driver loses at most the queued jobs; each job writes atomically (temp file + rename, or an
  appended line that the reader cuts off if torn), so what is on disk stays consistent.

`InlineWriter` has the same interface and runs each job in the caller: the synchronous reference (tests compare
the two) and the choice for one-off writers.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Protocol

Job = Callable[[], object]


class BackgroundWriteError(RuntimeError):
    """A queued run-directory write failed; the message names the write, the cause is chained."""


class Writer(Protocol):
    def submit(self, what: str, job: Job) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class InlineWriter:
    """Runs each job at once, in the caller; its errors raise there."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._closed = False

    def submit(self, what: str, job: Job) -> None:
        if self._closed:
            raise ValueError(f"{self.name} is closed (write of {what})")
        job()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True


class BackgroundWriter:
    """One daemon thread draining a bounded queue of (description, job); see the module docstring."""

    def __init__(self, name: str, max_pending: int = 8) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.name = name
        self._queue: queue.Queue[tuple[str, Job] | None] = queue.Queue(maxsize=max_pending)
        self._failed: tuple[str, BaseException] | None = None  # set once, by the thread
        self._reported = False
        self._closed = False
        # A daemon thread: an interpreter exiting without close() (a crash) must not hang on queued writes.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, what: str, job: Job) -> None:
        """Queue `job` (`what` names it in errors); raises the error of an earlier failed job first."""
        self._raise_failure()
        if self._closed:
            raise ValueError(f"{self.name} is closed (write of {what})")
        self._queue.put((what, job))

    def flush(self) -> None:
        """Wait until every job submitted so far has run; raise if one failed."""
        self._queue.join()
        self._raise_failure()

    def close(self) -> None:
        """Flush and stop the thread (idempotent). Raises a failure not raised before."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        if self._failed is not None and not self._reported:
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failed is not None:
            self._reported = True
            what, exc = self._failed
            raise BackgroundWriteError(f"{self.name}: writing {what} failed: {type(exc).__name__}: {exc}") from exc

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                what, job = item
                if self._failed is None:  # after a failure, later jobs are skipped: nothing is written past a gap
                    try:
                        job()
                    except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread, never dropped
                        self._failed = (what, exc)
            finally:
                self._queue.task_done()
