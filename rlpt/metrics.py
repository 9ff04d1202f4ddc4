"""Metric writers (JSONL + TensorBoard) and phase timers.

`metrics.jsonl` holds one JSON object per `write` call: `{"step": int, <key>: float | null, ...}`, keys sorted.
Non-finite values: training can legitimately produce a NaN loss or an inf grad norm and the user must see it,
so they are not rejected. JSON has no NaN/inf (Python's `NaN` token is not JSON and breaks other readers), so
the value is written as `null` and its key is listed in a `"nonfinite"` field (sorted key names; the field is
present only when non-empty). TensorBoard gets the actual value (NaN / inf), under the same keys.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from rlpt.background import BackgroundWriteError, BackgroundWriter, InlineWriter, Writer

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

RESERVED_KEYS = ("step", "nonfinite")


def _as_float(key: str, value: object) -> float:
    # float() would happily parse "1.5"; a string here is a caller bug, not a metric.
    if isinstance(value, (str, bytes)):
        raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]  # ints, numpy scalars, 1-element tensors
    except (TypeError, ValueError) as err:
        raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__} {value!r}") from err


def _record(step: int, values: Mapping[str, float]) -> tuple[dict[str, object], dict[str, float]]:
    """Build the JSON record and the float values for TensorBoard; validates keys and values."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"metrics step must be an int >= 0; got {step!r}")
    floats: dict[str, float] = {}
    for key in sorted(values):
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric keys must be non-empty strings; got {key!r} at step {step}")
        if key in RESERVED_KEYS:
            raise ValueError(f"metric key {key!r} is reserved by the metrics.jsonl format (step {step})")
        floats[key] = _as_float(key, values[key])
    record: dict[str, object] = {"step": step}
    record.update({k: (v if math.isfinite(v) else None) for k, v in floats.items()})
    nonfinite = [k for k, v in floats.items() if not math.isfinite(v)]
    if nonfinite:
        record["nonfinite"] = nonfinite
    return dict(sorted(record.items())), floats


def _drop_partial_last_line(path: Path) -> None:
    """A crash inside a write can leave an unterminated last line: that record was never complete, so cut it
    (only it) off, keeping the file valid JSONL for `read_metrics` and for the records appended after resume."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1  # rfind = -1 (a single partial line) keeps nothing
        warnings.warn(f"{path}: dropping an unterminated last line from a crashed write: {data[keep:][:80]!r}")
        f.truncate(keep)


class MetricsWriter:
    """Appends one JSON line per step to `run_dir/metrics.jsonl` and mirrors the scalars to `run_dir/tb`.

    `write` checks the row at once (a bad key or value raises in the caller) and, with `background=True` (the
    default), leaves the writing to a background thread (rlpt.background): the step does not wait on the disk.
    Rows are written in order, each flushed and fsynced, so a crash loses at most the rows still queued; `flush()`
    waits until every row so far is on disk, `close()` flushes and closes (a failed write raises, never silently).
    `submit` queues another run-directory write (the step's rollouts file, a checkpoint's rename) in the same order.
    `background=False` writes in the caller, with the same results.

    The file is opened in append mode: a resumed run continues the same file, so the same step may appear twice
    (the later record is the one after the resume). An unterminated last line left by a crash mid-write is cut off
    on open, with a warning.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, background: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        _drop_partial_last_line(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb: SummaryWriter | None = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is a heavy import

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        name = f"metrics writer for {self.run_dir}"
        self._writes: Writer = BackgroundWriter(name) if background else InlineWriter(name)
        self._closed = False

    def write(self, step: int, values: Mapping[str, float]) -> None:
        """Append the step's metrics; non-finite values become null + a "nonfinite" entry (module docstring)."""
        if self._closed:
            raise ValueError(f"MetricsWriter for {self.path} is closed (write at step {step})")
        record, floats = _record(step, values)  # here, not in the thread: the caller's bug raises at its call
        self._writes.submit(f"metrics row of step {step}", lambda: self._append(step, record, floats))

    def submit(self, what: str, job: Callable[[], object]) -> None:
        """Run `job` (another run-directory write) after the rows and jobs already queued; `what` names it."""
        if self._closed:
            raise ValueError(f"MetricsWriter for {self.path} is closed (write of {what})")
        self._writes.submit(what, job)

    def flush(self) -> None:
        """Return once every row and job queued so far is written (raises if one failed)."""
        self._writes.flush()

    def _append(self, step: int, record: dict[str, object], floats: dict[str, float]) -> None:
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            for key, value in floats.items():
                self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()

    def close(self) -> None:
        """Write everything queued, then close the files (idempotent); raises a queued write's failure."""
        self._closed = True
        try:
            self._writes.close()
        finally:
            if not self._file.closed:
                self._file.close()
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except BackgroundWriteError as err:  # the run's own error stays the one raised; the failed write rides along
            exc.add_note(f"and then: {err}")


def read_metrics(path: Path, live: bool = False) -> list[dict[str, object]]:
    """All records of a metrics.jsonl, in file order (nulls stay None; see "nonfinite").

    Blank lines are skipped; any other unparseable line raises with its file and line number rather than
    silently dropping data (the writer itself never leaves one: see `_drop_partial_last_line`). `live=True` reads
    a run that is still writing: an unterminated last line is a record being appended right now, and is skipped.
    """
    records: list[dict[str, object]] = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip() or (live and not line.endswith("\n")):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not a JSON object ({err.msg}): {line[:80]!r}") from err
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError(f"{path}:{lineno}: expected an object with a 'step' key; got {line[:80]!r}")
            records.append(record)
    return records


class PhaseTimer:
    """Wall time per named phase within a step: `with timer.phase("rollout"): ...`.

    A phase entered several times accumulates; distinct phases may nest (each measures its own span), but a
    phase may not nest inside itself (that would count its time twice). Time is recorded even when the body
    raises. `clock` defaults to `time.perf_counter` (monotonic); tests inject a fake one.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock if clock is not None else time.perf_counter
        self._totals: dict[str, float] = {}
        self._active: set[str] = set()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name in self._active:
            raise ValueError(f"PhaseTimer: phase {name!r} is already running (nested inside itself)")
        self._active.add(name)
        start = self._clock()
        try:
            yield
        finally:
            self._totals[name] = self._totals.get(name, 0.0) + (self._clock() - start)
            self._active.discard(name)

    def as_metrics(self, prefix: str = "timing/") -> dict[str, float]:
        """Seconds per phase since the last reset, e.g. {"timing/rollout": 1.25}."""
        return {f"{prefix}{name}": seconds for name, seconds in self._totals.items()}

    def add(self, totals: dict[str, float]) -> None:
        """Count seconds measured elsewhere ({"rollout": 1.5}: another thread's timer) into these phases."""
        for name, seconds in totals.items():
            self._totals[name] = self._totals.get(name, 0.0) + seconds

    def totals(self) -> dict[str, float]:
        return dict(self._totals)

    def reset(self) -> None:
        """Forget the totals (call once per step, after logging)."""
        self._totals.clear()


def truncate_metrics(path: Path, first_dropped_step: int) -> int:
    """Drop rows with step >= `first_dropped_step` (written after the checkpoint a run resumes from), so the
    resumed run appends exactly one row per step. Returns how many rows were dropped. Atomic (temp + rename)."""
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] < first_dropped_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)
    return len(lines) - len(kept)
