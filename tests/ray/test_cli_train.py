"""The console command a user types: `rlpt train` with overrides, on a local Ray cluster it starts itself."""

import subprocess
import sys
from pathlib import Path

import pytest

from rlpt.metrics import read_metrics

pytestmark = pytest.mark.ray
RLPT = str(Path(sys.executable).parent / "rlpt")


def test_rlpt_train_console_command(tmp_path):
    res = subprocess.run([RLPT, "train", "run.steps=2", f"run.root={tmp_path}", "run.name=cli"], capture_output=True,
                         text=True, timeout=600, env={**__import__("os").environ, "RAY_ADDRESS": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trained 2 grpo steps" in res.stdout
    assert "reward" in res.stderr  # the live progress bar (rich, on stderr)
    assert [r["step"] for r in read_metrics(tmp_path / "cli" / "metrics.jsonl")] == [0, 1]
    assert (tmp_path / "cli" / "checkpoints" / "step_000002" / "model.safetensors").is_file()
    # a quiet console: only rlpt's own lines (events, the progress bar); vLLM / Ray / DeepSpeed / transformers
    # output is in the run directory's logs/
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    foreign = [ln for ln in lines if not ln.startswith(("[rlpt] ", "train "))]
    assert not foreign, foreign[:10]
    assert any(ln.startswith("[rlpt] preflight") for ln in lines) and any("actors up in" in ln for ln in lines)
    # one machine: the learner and the engine each compute on every core in their phase (cluster.threads_per_actor
    # auto), not on the one thread Ray gives a num_cpus=1 actor
    cores = len(__import__("os").sched_getaffinity(0))
    up = next(ln for ln in lines if "actors up in" in ln)
    assert f"torch threads learner {cores}, rollout-0 {cores}, reference {cores}" in up, up
    logs = tmp_path / "cli" / "logs"
    assert "vLLM" in (logs / "rollout-0.log").read_text() or "vllm" in (logs / "rollout-0.log").read_text()
    assert (logs / "learner-rank-0.log").is_file() and (logs / "verifier-0.log").is_file()


def test_rlpt_train_bad_config_fails_fast_with_the_key(tmp_path):
    res = subprocess.run([RLPT, "train", "learner.zero_stag=3", f"run.root={tmp_path}"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "learner.zero_stag: unknown key" in res.stderr
