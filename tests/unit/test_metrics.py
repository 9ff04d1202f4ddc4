"""MetricsWriter (JSONL + TensorBoard), read_metrics and PhaseTimer (rlpt/metrics.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlpt.background import BackgroundWriteError
from rlpt.metrics import MetricsWriter, PhaseTimer, read_metrics

pytestmark = pytest.mark.unit


def _tb_scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_jsonl_and_tensorboard_hold_the_same_scalars(tmp_path: Path) -> None:
    steps = {
        0: {"loss": 1.5, "reward/mean": 0.25, "timing/rollout": 2.0},
        1: {"timing/rollout": 1.0, "loss": 1.25, "reward/mean": 0.5},
        2: {"loss": 1.0, "reward/mean": 0.75, "timing/rollout": 3},
    }
    with MetricsWriter(tmp_path) as writer:
        for step, values in steps.items():
            writer.write(step, values)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    records = read_metrics(tmp_path / "metrics.jsonl")
    for line, record in zip(lines, records):
        assert list(json.loads(line)) == sorted(record)  # keys written sorted
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[2]["timing/rollout"] == 3.0
    scalars = _tb_scalars(tmp_path / "tb")
    assert set(scalars) == {"loss", "reward/mean", "timing/rollout"}
    for record in records:
        for key, value in record.items():
            if key != "step":
                assert scalars[key][record["step"]] == pytest.approx(value)


def test_each_write_is_on_disk_after_flush(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write(7, {"loss": 0.5})
    writer.flush()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"loss": 0.5, "step": 7}]
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write(8, {"loss": 0.5})
    assert not (tmp_path / "tb").exists()


def test_nonfinite_values_are_null_and_listed(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path) as writer:
        writer.write(3, {"loss": float("nan"), "grad_norm": float("inf"), "reward": 0.5})
        writer.write(4, {"loss": 0.25, "grad_norm": 1.0, "reward": 0.5})
    text = (tmp_path / "metrics.jsonl").read_text()

    def no_constants(token: str) -> None:
        raise AssertionError(f"non-JSON constant {token} written")

    strict = [json.loads(line, parse_constant=no_constants) for line in text.splitlines()]
    assert strict[0] == {"step": 3, "loss": None, "grad_norm": None, "reward": 0.5,
                         "nonfinite": ["grad_norm", "loss"]}
    assert "nonfinite" not in strict[1]
    scalars = _tb_scalars(tmp_path / "tb")  # TensorBoard keeps the real values, same keys
    assert set(scalars) == {"loss", "grad_norm", "reward"}
    assert math.isnan(scalars["loss"][3]) and scalars["grad_norm"][3] == math.inf


def test_bad_keys_and_values_raise(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError, match="'step' is reserved"):
            writer.write(0, {"step": 1.0})
        with pytest.raises(TypeError, match="'loss'"):
            writer.write(0, {"loss": "1.5"})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="step"):
            writer.write(-1, {"loss": 1.0})
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_resume_appends_and_drops_a_partial_line(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(0, {"loss": 1.0})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"loss": 0.9, "st')  # a crash in the middle of a write
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(tmp_path / "metrics.jsonl")
    with pytest.warns(UserWarning, match="unterminated"):
        writer = MetricsWriter(tmp_path, tensorboard=False)
    with writer:
        writer.write(1, {"loss": 0.8})
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"loss": 1.0, "step": 0}, {"loss": 0.8, "step": 1}]


class FakeClock:
    def __init__(self, *ticks: float) -> None:
        self.ticks = list(ticks)

    def __call__(self) -> float:
        return self.ticks.pop(0)


def test_phase_timer_accumulates_and_resets() -> None:
    # rollout 10 -> 12 (2 s) and 20 -> 20.5 (0.5 s) accumulate to 2.5; train 13 -> 16 = 3
    timer = PhaseTimer(clock=FakeClock(10.0, 12.0, 13.0, 16.0, 20.0, 20.5, 30.0, 31.0))
    with timer.phase("rollout"):
        pass
    with timer.phase("train"):
        pass
    with timer.phase("rollout"):
        pass
    assert timer.as_metrics() == {"timing/rollout": 2.5, "timing/train": 3.0}
    timer.reset()
    assert timer.as_metrics() == {}
    with timer.phase("sync"):
        pass
    assert timer.as_metrics() == {"timing/sync": 1.0}


def test_phase_timer_records_on_error_and_rejects_self_nesting() -> None:
    timer = PhaseTimer(clock=FakeClock(0.0, 4.0, 5.0, 5.0))
    with pytest.raises(RuntimeError):
        with timer.phase("verify"):
            raise RuntimeError("verifier crashed")
    assert timer.as_metrics() == {"timing/verify": 4.0}
    with pytest.raises(ValueError, match="already running"):
        with timer.phase("train"):
            with timer.phase("train"):
                pass


def test_phase_timer_real_clock_is_monotonic() -> None:
    timer = PhaseTimer()
    with timer.phase("x"):
        pass
    assert 0.0 <= timer.as_metrics()["timing/x"] < 1.0


def test_truncate_metrics_drops_rows_from_the_resume_step(tmp_path: Path) -> None:
    from rlpt.metrics import truncate_metrics

    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(5):
            w.write(step, {"x": float(step)})
    assert truncate_metrics(tmp_path / "metrics.jsonl", 3) == 2
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    assert truncate_metrics(tmp_path / "absent.jsonl", 0) == 0


def test_background_and_inline_writers_write_the_same_files(tmp_path: Path) -> None:
    rows = {s: {"loss": 1.0 / (s + 1), "reward/mean": float(s % 3), "grad_norm": float("inf") if s == 4 else 1.0}
            for s in range(20)}
    for kind, background in (("bg", True), ("inline", False)):
        with MetricsWriter(tmp_path / kind, background=background) as writer:
            for step, values in rows.items():
                mine = dict(values)
                writer.write(step, mine)
                mine["loss"] = -1.0  # the caller's dict is its own again once write returns
    assert (tmp_path / "bg" / "metrics.jsonl").read_bytes() == (tmp_path / "inline" / "metrics.jsonl").read_bytes()
    assert len(read_metrics(tmp_path / "bg" / "metrics.jsonl")) == 20
    assert read_metrics(tmp_path / "bg" / "metrics.jsonl")[0]["loss"] == 1.0
    assert _tb_scalars(tmp_path / "bg" / "tb").keys() == _tb_scalars(tmp_path / "inline" / "tb").keys()


def test_submitted_jobs_run_in_order_with_the_rows(tmp_path: Path) -> None:
    order: list[str] = []
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(0, {"x": 0.0})
        writer.submit("a file", lambda: order.append(f"rows on disk: {len(read_metrics(writer.path))}"))
        writer.write(1, {"x": 1.0})
        writer.submit("another", lambda: order.append(f"rows on disk: {len(read_metrics(writer.path))}"))
    assert order == ["rows on disk: 1", "rows on disk: 2"]
    with pytest.raises(ValueError, match="closed"):
        writer.submit("late", lambda: None)


def test_a_failed_write_raises_once_and_later_writes_are_skipped(tmp_path: Path) -> None:
    ran: list[int] = []

    def fail() -> None:
        raise OSError("disk full")

    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write(0, {"x": 0.0})
    writer.submit("rollouts of step 0", fail)
    writer.write(1, {"x": 1.0})  # queued behind the failure: never written (nothing past a gap)
    with pytest.raises(BackgroundWriteError, match=r"writing rollouts of step 0 failed: OSError: disk full"):
        writer.flush()
    with pytest.raises(BackgroundWriteError, match="disk full"):  # and on every later submit
        writer.submit("next", lambda: ran.append(1))
    writer.close()  # already reported: close does not raise it again
    assert ran == [] and read_metrics(tmp_path / "metrics.jsonl") == [{"step": 0, "x": 0.0}]


def test_close_raises_a_failure_nobody_saw_and_keeps_the_runs_own_error(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.submit("a checkpoint", lambda: 1 / 0)
    with pytest.raises(BackgroundWriteError, match="a checkpoint failed: ZeroDivisionError"):
        writer.close()
    with pytest.raises(RuntimeError, match="learner died") as info:
        with MetricsWriter(tmp_path / "b", tensorboard=False) as w:
            w.submit("rollouts", lambda: 1 / 0)
            raise RuntimeError("learner died")
    assert any("rollouts failed" in note for note in info.value.__notes__)


def test_background_writer_is_bounded_and_close_flushes_everything(tmp_path: Path) -> None:
    import threading

    from rlpt.background import BackgroundWriter

    gate, done = threading.Event(), []
    writer = BackgroundWriter("test writer", max_pending=1)
    writer.submit("blocked", gate.wait)
    writer.submit("queued", lambda: done.append(1))  # fills the queue while the first job waits on the gate
    third = threading.Thread(target=writer.submit, args=("third", lambda: done.append(2)))
    third.start()
    third.join(0.3)
    blocked = third.is_alive()  # held back by the full queue until the gate opens
    gate.set()
    third.join()
    writer.close()
    assert blocked and done == [1, 2]


def test_live_read_skips_the_record_being_appended(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "reward/mean": 0.5}\n{"step": 1, "rew')  # the writer is mid-line
    with pytest.raises(ValueError, match=":2: not a JSON object"):
        read_metrics(path)
    assert read_metrics(path, live=True) == [{"step": 0, "reward/mean": 0.5}]
