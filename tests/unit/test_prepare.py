import json

import pytest

from rlpt.prepare import prepare
from rlpt.config import load_config

pytestmark = pytest.mark.unit


def test_too_long_prompts_are_skipped_counted_and_reported(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n' + json.dumps({"prompt": "9+" * 200 + "1=", "answer": "x"})
                    + "\n")
    cfg = load_config(None, [f"run.root={tmp_path}", "data.task=null", f"data.path={data}",
                             "data.max_prompt_tokens=16"])
    prep = prepare(cfg, tmp_path / "run")
    assert [p.text for p in prep.prompts] == ["1+1="] and prep.skipped_too_long == ["d-1"]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["skipped_too_long"] == 1 and report["skipped_uids"] == ["d-1"]
    assert "skipped 1 of 2 prompts longer than the prompt budget of 16 tokens" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_holdout_is_drawn_with_the_seed_removed_from_training_and_reported(tmp_path, capsys):
    args = [f"run.root={tmp_path}", "run.eval_every=5", "eval.holdout=40", "data.arith.num_prompts=200"]
    prep = prepare(load_config(None, args), tmp_path / "a")
    again = prepare(load_config(None, args), tmp_path / "b")
    other = prepare(load_config(None, [*args, "run.seed=1"]), tmp_path / "c")
    assert len(prep.eval_prompts) == 40 and len(prep.prompts) == 160
    assert not {p.uid for p in prep.eval_prompts} & {p.uid for p in prep.prompts}
    assert [p.uid for p in again.eval_prompts] == [p.uid for p in prep.eval_prompts]  # same seed, same set
    assert {p.uid for p in other.eval_prompts} != {p.uid for p in prep.eval_prompts}
    report = json.loads((tmp_path / "a" / "data_report.json").read_text())
    assert report["prompts"] == 200 and report["kept"] == 160 and report["eval_prompts"] == 40
    assert "40 evaluation prompts" in capsys.readouterr().err
    capped = prepare(load_config(None, [*args, "eval.num_prompts=7"]), tmp_path / "d")
    assert [p.uid for p in capped.eval_prompts] == [p.uid for p in prep.eval_prompts][:7]


def test_eval_file_is_read_with_the_data_settings_and_training_keeps_every_prompt(tmp_path):
    evals = tmp_path / "eval.jsonl"
    evals.write_text('{"q": "2+2=", "a": "4"}\n{"q": "3+3=", "a": "6"}\n')
    cfg = load_config(None, [f"run.root={tmp_path}", "run.eval_every=5", f"eval.path={evals}",
                             "data.columns.prompt=q", "data.columns.answer=a", "data.arith.num_prompts=50"])
    prep = prepare(cfg, tmp_path / "run")
    assert [(p.text, p.answer) for p in prep.eval_prompts] == [("2+2=", "4"), ("3+3=", "6")]
    assert len(prep.prompts) == 50 and all(p.prompt_ids for p in prep.eval_prompts)


def test_evaluation_config_errors_name_the_keys(tmp_path):
    from rlpt.config import ConfigError
    from rlpt.preflight import PreflightError

    with pytest.raises(ConfigError, match="run.eval_every needs an evaluation set: eval.holdout"):
        load_config(None, ["run.eval_every=5"])
    with pytest.raises(ConfigError, match="one of eval.holdout"):
        load_config(None, ["eval.holdout=4", "eval.path=x.jsonl"])
    with pytest.raises(ConfigError, match=r"eval.pass_k \[8\] must be between 1 and eval.samples=4"):
        load_config(None, ["eval.pass_k=[1, 8]"])
    with pytest.raises(ConfigError, match="trains in rounds"):
        prepare(load_config("configs/dpo/arith_tiny.yaml", [f"run.root={tmp_path}", "run.eval_every=2",
                                                             "eval.holdout=8"]), tmp_path / "dpo")
    with pytest.raises(PreflightError, match="leaves no training prompt"):
        prepare(load_config(None, [f"run.root={tmp_path}", "eval.holdout=600"]), tmp_path / "x")
