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
