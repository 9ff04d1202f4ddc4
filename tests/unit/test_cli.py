import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlpt.cli import main, split_config_args
from rlpt.metrics import read_metrics
from rlpt.rollout_log import read_rollouts

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_split_config_args():
    assert split_config_args(["c.yaml", "a.b=1", "c=2"]) == ("c.yaml", ["a.b=1", "c=2"])
    assert split_config_args(["a=1"]) == (None, ["a=1"])


def test_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", str(ROOT / "configs/grpo/arith_tiny.yaml"), "learner.lr=2e-3"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.002" in out and "name: grpo-arith-tiny" in out and "zero_stage: 2" in out  # defaults included


def test_config_schema_is_json_schema(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"model", "learner", "run"} <= set(schema["properties"])


def test_config_error_exit_code_and_message(capsys):
    assert main(["config", "show", "learner.lrr=1"]) == 2
    assert "learner.lrr: unknown key" in capsys.readouterr().err
    assert main(["config", "show", "a.yaml", "b.yaml"]) == 2


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).parent / "rlpt"
    res = subprocess.run([str(exe), "model", "init-tiny", "--out", str(tmp_path / "m"), "--arch", "qwen2"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "m" / "config.json").is_file() and "qwen2" in res.stdout
    again = subprocess.run([str(exe), "model", "init-tiny", "--out", str(tmp_path / "m")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_eval_end_to_end(tmp_path, capsys):
    """Real work: build the tiny model, sample completions, verify them, write the run directory."""
    args = ["eval", f"run.root={tmp_path}", "run.name=e", "rollout.samples_per_prompt=2", "rollout.prompts_per_step=4",
            "--num-prompts", "6"]
    assert main(args) == 0
    run = tmp_path / "e-eval"
    assert (run / "config.yaml").is_file()
    (row,) = read_metrics(run / "metrics.jsonl")
    assert 0.0 <= row["eval/reward_mean"] <= 1.0 and row["tokens/generated"] > 0
    table = read_rollouts(run)
    assert table.num_rows == 12 and set(table.column("policy_version").to_pylist()) == {0}
    assert len(set(table.column("prompt_uid").to_pylist())) == 6  # 6 distinct prompts, 2 samples each
    assert "evaluated 6 prompts x 2 samples" in capsys.readouterr().out


def test_eval_bad_verifier_plugin_is_clear(tmp_path, capsys):
    assert main(["eval", f"run.root={tmp_path}", "verifier.name=no_such_pkg.mod:fn", "--num-prompts", "1"]) == 2
    assert "no_such_pkg" in capsys.readouterr().err
