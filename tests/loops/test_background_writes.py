"""The run directory written by the background writer (rlpt.background via MetricsWriter and end_step) is the one
the synchronous writer gives, and a run that fails leaves only complete checkpoints, each with its rows on disk."""

import functools
import json
from pathlib import Path

import pytest

from rlpt.background import BackgroundWriteError
from rlpt.loops import online
from rlpt.loops.common import LoopState, latest_checkpoint
from rlpt.metrics import MetricsWriter, read_metrics
from rlpt.rollout_log import read_rollouts
from tests.loops.test_online_loop import make, prompts

pytestmark = pytest.mark.loops


def timeless(rows: list[dict]) -> list[dict]:
    """Rows without the wall-clock figures (they differ between any two runs)."""
    return [{k: v for k, v in r.items() if not k.startswith("timing/") and k != "tokens/per_s"} for r in rows]


def test_background_run_dir_equals_the_synchronous_one(tmp_path, monkeypatch):
    cfg, _, _, w = make(tmp_path / "bg", "run.steps=6", "run.checkpoint_every=2", "run.keep_checkpoints=2")
    online.run(cfg, w, prompts(10), tmp_path / "bg", pad_id=0)
    monkeypatch.setattr(online, "MetricsWriter", functools.partial(MetricsWriter, background=False))
    cfg, _, _, w = make(tmp_path / "sync", "run.steps=6", "run.checkpoint_every=2", "run.keep_checkpoints=2")
    online.run(cfg, w, prompts(10), tmp_path / "sync", pad_id=0)
    bg, sync = read_metrics(tmp_path / "bg" / "metrics.jsonl"), read_metrics(tmp_path / "sync" / "metrics.jsonl")
    assert [r["step"] for r in bg] == list(range(6)) and timeless(bg) == timeless(sync)
    assert [set(r) for r in bg] == [set(r) for r in sync]
    assert read_rollouts(tmp_path / "bg").to_pylist() == read_rollouts(tmp_path / "sync").to_pylist()
    assert read_rollouts(tmp_path / "bg").num_rows == 6 * 16
    for d in ("bg", "sync"):
        ckpts = sorted(p.name for p in (tmp_path / d / "checkpoints").iterdir())
        assert ckpts == ["step_000004", "step_000006"]  # renamed, retention applied, no .tmp left
    for name in ("step_000004", "step_000006"):
        states = [json.loads((tmp_path / d / "checkpoints" / name / "loop_state.json").read_text())
                  for d in ("bg", "sync")]
        assert states[0] == states[1]


class FailingLearner:
    """Saves like the fakes, but its save_state raises at the `fail_at`-th checkpoint."""

    def __init__(self, fail_at: int):
        self.fail_at, self.saves = fail_at, 0

    def train_step(self, batch, step):
        return {"actor/loss": 0.0, "logprob_gap/mean": 0.0}

    def save_hf(self, out_dir: Path):
        (out_dir / "model.safetensors").write_text("x")

    def save_state(self, out_dir: Path):
        self.saves += 1
        out_dir.mkdir(parents=True)
        if self.saves == self.fail_at:
            raise RuntimeError("learner died while saving")
        (out_dir / "optimizer.pt").write_text("x")


def test_a_crash_mid_checkpoint_leaves_complete_checkpoints_with_their_rows(tmp_path):
    cfg, _, _, w = make(tmp_path, "run.steps=6", "run.checkpoint_every=1")
    w.learner = FailingLearner(fail_at=3)
    with pytest.raises(RuntimeError, match="learner died while saving"):
        online.run(cfg, w, prompts(10), tmp_path, pad_id=0)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1]  # step 2 ended in the crash
    assert sorted(set(read_rollouts(tmp_path).column("step").to_pylist())) == [0, 1, 2]  # queued before it
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step_000002" and LoopState.read(ckpt / "loop_state.json").next_step == 2
    assert (tmp_path / "checkpoints" / "step_000003.tmp").is_dir()  # the torn one is never "latest"


def test_a_failed_background_write_stops_the_run_and_completes_no_later_checkpoint(tmp_path, monkeypatch):
    import rlpt.rollout_log

    real = rlpt.rollout_log.write_rollouts

    def write_rollouts(run_dir, step, scored, *marks):
        if step == 1:
            raise OSError("disk full")
        return real(run_dir, step, scored, *marks)

    monkeypatch.setattr(rlpt.rollout_log, "write_rollouts", write_rollouts)
    cfg, _, _, w = make(tmp_path, "run.steps=6", "run.checkpoint_every=1")
    with pytest.raises(BackgroundWriteError, match="writing rollouts of step 1 failed: OSError: disk full"):
        online.run(cfg, w, prompts(10), tmp_path, pad_id=0)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0]  # nothing past the gap
    assert latest_checkpoint(tmp_path).name == "step_000001"
    assert not (tmp_path / "checkpoints" / "step_000002").exists()
