import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from actors.submit import build_entrypoint, build_runtime_env, config_in_working_dir, parse_env
from rlpt.cli import build_parser, cmd_jobs_list, cmd_submit, default_job_address, main, split_config_args
from rlpt.errors import UsageError
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


def test_entry_runs_exit_handlers_flushes_and_keeps_the_exit_code(tmp_path):
    """`rlpt` ends with os._exit after main (no module teardown): exit handlers still run, buffered output is not
    lost, and the exit code is main's (0 and 2)."""
    marker = tmp_path / "handler_ran"
    script = ("import atexit, sys; from pathlib import Path; "
              f"atexit.register(lambda: Path({str(marker)!r}).write_text('yes')); "
              "print('buffered', end=''); from rlpt.cli import entry; sys.argv[1:] = sys.argv[2:]; entry()")
    ok = subprocess.run([sys.executable, "-c", script, "-", "config", "show", "learner.lr=2e-3"], capture_output=True,
                        text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout.startswith("buffered") and "lr: 0.002" in ok.stdout, ok.stderr
    assert marker.read_text() == "yes"
    bad = subprocess.run([sys.executable, "-m", "rlpt.cli", "config", "show", "learner.lrr=1"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "learner.lrr: unknown key" in bad.stderr


def test_eval_end_to_end(tmp_path, capsys):
    """Real work: build the tiny model, sample completions, verify them, write the run directory."""
    args = ["eval", f"run.root={tmp_path}", "run.name=e", "eval.samples=2", "eval.pass_k=[1, 2]",
            "rollout.prompts_per_step=4", "--num-prompts", "6"]
    assert main(args) == 0
    run = tmp_path / "e-eval"
    assert (run / "config.yaml").is_file()
    (row,) = read_metrics(run / "metrics.jsonl")
    assert 0.0 <= row["eval/reward_mean"] <= 1.0 and row["tokens/generated"] > 0
    assert row["eval/prompts"] == 6 and 0.0 <= row["eval/greedy_pass@1"] <= 1.0
    assert 0.0 <= row["eval/pass@1"] <= row["eval/pass@2"] <= 1.0 and row["eval/pass@1"] == row["eval/mean@2"]
    table = read_rollouts(run)
    assert table.num_rows == 12 and set(table.column("policy_version").to_pylist()) == {0}
    assert len(set(table.column("prompt_uid").to_pylist())) == 6  # 6 distinct prompts, 2 samples each
    assert "evaluated 6 prompts, greedy + 2 samples each: " in capsys.readouterr().out


def test_eval_bad_verifier_plugin_is_clear(tmp_path, capsys):
    assert main(["eval", f"run.root={tmp_path}", "verifier.name=no_such_pkg.mod:fn", "--num-prompts", "1"]) == 2
    assert "no_such_pkg" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- rlpt submit / rlpt jobs
def test_submit_and_jobs_argument_parsing(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    ns = build_parser().parse_args(["submit", "configs/grpo/arith_tiny.yaml", "run.steps=8", "--follow", "--env",
                                    "A=1", "--env", "B=x=y", "--pip", "emoji", "--no-validate"])
    assert (ns.args, ns.follow, ns.env, ns.pip, ns.validate) == (
        ["configs/grpo/arith_tiny.yaml", "run.steps=8"], True, ["A=1", "B=x=y"], ["emoji"], False)
    assert ns.address == "http://127.0.0.1:8265" and ns.python == "python" and ns.fn is cmd_submit
    for sub in ("status", "logs", "stop"):
        ns = build_parser().parse_args(["jobs", sub, "raysubmit_abc", "--address", "http://h:8265"])
        assert (ns.job_id, ns.address) == ("raysubmit_abc", "http://h:8265")
    assert build_parser().parse_args(["jobs", "logs", "x", "--follow"]).follow
    assert build_parser().parse_args(["jobs", "list"]).fn is cmd_jobs_list
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not the job server: ignored
    assert default_job_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert build_parser().parse_args(["jobs", "list"]).address == "http://head:8265"


def test_build_entrypoint_quotes_every_word():
    assert build_entrypoint(None, []) == "python -m rlpt.cli train"
    cmd = build_entrypoint("configs/my run.yaml", ["run.name=a b", "data.path=$HOME;rm -rf x"], "/opt/py 3/python")
    assert shlex.split(cmd) == ["/opt/py 3/python", "-m", "rlpt.cli", "train", "configs/my run.yaml",
                                "run.name=a b", "data.path=$HOME;rm -rf x"]


def test_parse_env():
    assert parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    for bad in ("NOVALUE", "=1", "1A=2", "A-B=1"):
        with pytest.raises(UsageError, match="expected KEY=VALUE"):
            parse_env([bad])


def test_config_must_be_inside_the_working_dir(tmp_path):
    (tmp_path / "wd" / "configs").mkdir(parents=True)
    (tmp_path / "wd" / "configs" / "c.yaml").write_text("run: {steps: 1}\n")
    (tmp_path / "other.yaml").write_text("run: {steps: 1}\n")
    assert config_in_working_dir(str(tmp_path / "wd/configs/c.yaml"), tmp_path / "wd") == "configs/c.yaml"
    with pytest.raises(UsageError, match="outside the job's working dir"):
        config_in_working_dir(str(tmp_path / "other.yaml"), tmp_path / "wd")
    with pytest.raises(UsageError, match="no such file"):
        config_in_working_dir(str(tmp_path / "wd/missing.yaml"), tmp_path / "wd")


def test_build_runtime_env_layers_file_defaults_and_flags():
    base = {"working_dir": "/ignored", "excludes": ["data/big/"], "env_vars": {"A": 1, "HF_HUB_OFFLINE": "0"},
            "pip": ["requests"], "py_modules": ["s3://bucket/m.zip"]}
    rt = build_runtime_env(base, "/wd", {"HF_HUB_OFFLINE": "1", "B": "b"}, {"A": "cli"}, ["emoji"])
    assert rt["working_dir"] == "/wd" and rt["py_modules"] == ["s3://bucket/m.zip"]
    assert rt["excludes"][0] == "data/big/" and ".venv/" in rt["excludes"] and "runs/" in rt["excludes"]
    assert rt["env_vars"] == {"HF_HUB_OFFLINE": "0", "B": "b", "A": "cli"}  # defaults < file < --env; all str
    assert rt["pip"] == ["requests", "emoji"]
    assert build_runtime_env({"pip": {"packages": ["a"], "pip_check": False}}, "/wd", {}, {}, ["b"])["pip"] == {
        "packages": ["a", "b"], "pip_check": False}
    assert "pip" not in build_runtime_env({}, "/wd", {}, {}, [])
    with pytest.raises(UsageError, match="--pip adds to"):
        build_runtime_env({"pip": "requirements.txt"}, "/wd", {}, {}, ["b"])


def test_submit_refuses_bad_input_locally_before_any_cluster(tmp_path, capsys, monkeypatch):
    """Nothing here reaches a job server (none runs at this address): the errors come first."""
    monkeypatch.chdir(ROOT)
    no_server = ["--address", "http://127.0.0.1:9"]

    def err() -> str:  # rich wraps at the console width
        return " ".join(capsys.readouterr().err.split())

    assert main(["submit", "algorithm.nam=grpo", *no_server]) == 2
    assert "algorithm.nam: unknown key" in err()
    assert main(["submit", "learner.lr=fast", *no_server]) == 2
    assert "learner.lr" in err()
    (tmp_path / "c.yaml").write_text("run: {steps: 1}\n")
    assert main(["submit", str(tmp_path / "c.yaml"), *no_server]) == 2
    assert "outside the job's working dir" in err()
    assert main(["submit", "--env", "NOVALUE", *no_server]) == 2
    assert "expected KEY=VALUE" in err()
    (tmp_path / "rt.yaml").write_text("- not a mapping\n")
    assert main(["submit", "--runtime-env", str(tmp_path / "rt.yaml"), *no_server]) == 2
    assert "expected a mapping" in err()


def test_a_fault_the_run_cannot_survive_is_printed_without_a_traceback(monkeypatch, capsys):
    from actors.learner import LearnerRankLost

    def dies(ns):
        raise LearnerRankLost("learner rank 1 died during train_step. Resume with: rlpt train --resume /r")

    monkeypatch.setattr("rlpt.cli.cmd_train", dies)
    assert main(["train", "run.steps=1"]) == 1
    err = capsys.readouterr().err
    assert "LearnerRankLost: learner rank 1 died during train_step" in err and "Traceback" not in err

    def bug(ns):
        raise KeyError("a bug, not a fault")  # anything else keeps its traceback

    monkeypatch.setattr("rlpt.cli.cmd_train", bug)
    with pytest.raises(KeyError):
        main(["train", "run.steps=1"])


def test_every_runtime_fault_shares_the_one_base_class_the_cli_catches():
    from actors.calls import ActorCallTimeout, ActorLost
    from actors.learner import LearnerRankLost, LearnerTimeout
    from actors.placement import PlacementTimeout
    from actors.rollout import RolloutTimeout, RolloutWorkerLost
    from actors.sync_group import SyncMismatchError
    from actors.verifier import VerifierWorkerLost
    from actors.weight_sync import SyncGroupError
    from rlpt.errors import RunFault

    faults = [ActorCallTimeout, ActorLost, LearnerRankLost, LearnerTimeout, PlacementTimeout, RolloutTimeout,
              RolloutWorkerLost, SyncMismatchError, VerifierWorkerLost, SyncGroupError]
    assert all(issubclass(f, RunFault) for f in faults)
    assert all(issubclass(f, TimeoutError) for f in faults if f.__name__.endswith("Timeout"))


def test_a_new_run_refuses_a_directory_that_holds_a_run(tmp_path, capsys):
    """Metrics rows of two runs in one file, and `--resume` picking the newest checkpoint of either: a new run in
    an earlier run's directory stops before the preflight (exit 2), naming `--resume`; an empty one is fine."""
    for used in ("metrics.jsonl", "checkpoints"):
        run = tmp_path / f"r-{used.split('.')[0]}"
        run.mkdir()
        (run / used).touch() if "." in used else (run / used).mkdir()
        assert main(["train", f"run.root={tmp_path}", f"run.name={run.name}", "model.path=/no/such/model"]) == 2
        err = capsys.readouterr().err
        assert f"{run} already holds a run ({used})" in err and f"rlpt train --resume {run}" in err
    (tmp_path / "fresh").mkdir()  # exists but empty: the preflight runs (and fails on the missing model)
    assert main(["train", f"run.root={tmp_path}", "run.name=fresh", "model.path=/no/such/model"]) == 2
    assert "already holds a run" not in capsys.readouterr().err
