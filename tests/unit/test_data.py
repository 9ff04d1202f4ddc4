import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlpt.config import ColumnMap, load_config
from rlpt.data import DataError, PromptCursor, load_prompts, tokenize_prompts
from rlpt.data.encode import PromptTooLongError
from rlpt.data.files import read_prompts
from rlpt.types import Prompt

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------------------------------ synthetic
def test_arith_is_seeded_and_correct():
    cfg = load_config(None, ["data.arith.num_prompts=50", "data.arith.ops=['+','-','*']", "data.arith.num_operands=3"])
    a, b = load_prompts(cfg.data, 7), load_prompts(cfg.data, 7)
    assert a == b and a != load_prompts(cfg.data, 8)
    for p in a:
        assert p.text.endswith("=") and int(p.answer) == eval(p.text[:-1])
        assert all(0 <= x <= cfg.data.arith.max_operand for x in p.meta["operands"])


def test_countdown_targets_are_reachable():
    from fractions import Fraction

    cfg = load_config(None, ["data.task=countdown", "data.countdown.num_prompts=40"])
    for p in load_prompts(cfg.data, 0):
        sol = p.meta["example_solution"]
        assert Fraction(eval(sol)) == p.meta["target"] == int(p.answer)
        used = [int(t) for t in sol.replace("(", " ").replace(")", " ").translate(str.maketrans("+-*/", "    ")).split()]
        pool = list(p.meta["numbers"])
        for u in used:  # each given number at most once
            pool.remove(u)


# ------------------------------------------------------------------------------------------------ files
def test_jsonl_and_parquet_with_column_mapping(tmp_path):
    rows = [{"q": "1+1=", "a": 2, "level": "easy", "rid": "x1"}, {"q": "2+2=", "a": 4, "level": "hard", "rid": "x2"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    cols = ColumnMap(prompt="q", answer="a", meta=("level",), id="rid")
    for name in ("d.jsonl", "d.parquet"):
        ps = read_prompts(tmp_path / name, cols)
        assert [p.text for p in ps] == ["1+1=", "2+2="]
        assert [p.answer for p in ps] == ["2", "4"] and ps[1].meta == {"level": "hard"} and ps[0].uid == "x1"


def test_missing_column_names_file_and_columns(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"question": "1+1="}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: missing column\(s\) \['prompt', 'answer'\]; the file has \['question'\]"):
        read_prompts(tmp_path / "d.jsonl", ColumnMap())


def test_bad_row_names_file_row_and_column(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "ok", "answer": "1"}\n{"prompt": "", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: row 1, column 'prompt': prompt must be a non-empty string"):
        read_prompts(tmp_path / "d.jsonl", ColumnMap())
    (tmp_path / "e.jsonl").write_text('{"prompt": "ok", "answer": null}\n')
    with pytest.raises(DataError, match=r"row 0, column 'answer': answer must be a string or a number"):
        read_prompts(tmp_path / "e.jsonl", ColumnMap())


def test_invalid_json_names_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": \n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        read_prompts(tmp_path / "d.jsonl", ColumnMap())


def test_mixed_type_column_names_line_and_column(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "answer": 1}\n{"prompt": "b", "answer": 2}\n'
                                      '{"prompt": "c", "answer": "x"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: column 'answer' is a str here but a number on line 1"):
        read_prompts(tmp_path / "d.jsonl", ColumnMap())


def test_empty_missing_and_unsupported(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_prompts(tmp_path / "e.jsonl", ColumnMap())
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
                   tmp_path / "e.parquet")
    with pytest.raises(DataError, match="empty"):
        read_prompts(tmp_path / "e.parquet", ColumnMap())
    with pytest.raises(DataError, match="not found"):
        read_prompts(tmp_path / "nope.jsonl", ColumnMap())
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match="unsupported dataset format"):
        read_prompts(tmp_path / "d.csv", ColumnMap())


def test_load_prompts_from_file_via_config(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "3+4=", "answer": "7"}\n')
    cfg = load_config(None, ["data.task=null", f"data.path={tmp_path / 'd.jsonl'}"])
    assert load_prompts(cfg.data, 0)[0] == Prompt(uid="d-0", text="3+4=", answer="7", meta={})


# ------------------------------------------------------------------------------------------------ cursor
def test_cursor_epochs_visit_each_item_once_and_cross_boundaries():
    c = PromptCursor(10, seed=3)
    taken = c.take(7) + c.take(7) + c.take(6)  # 20 = two epochs; the 2nd batch straddles the boundary
    assert sorted(taken[:10]) == list(range(10)) and sorted(taken[10:]) == list(range(10))
    assert taken[:10] != taken[10:]  # a new permutation each epoch
    assert PromptCursor(10, seed=3).take(20) == taken  # deterministic
    assert PromptCursor(10, seed=4).take(10) != taken[:10]


def test_cursor_resume_equals_uninterrupted():
    full = PromptCursor(13, seed=1)
    expected = [full.take(5) for _ in range(6)]
    a = PromptCursor(13, seed=1)
    got = [a.take(5) for _ in range(3)]
    b = PromptCursor(13, seed=1)
    b.load_state_dict(dict(a.state_dict()))
    got += [b.take(5) for _ in range(3)]
    assert got == expected


def test_cursor_rejects_changed_dataset_and_empty():
    c = PromptCursor(10, seed=0)
    with pytest.raises(ValueError, match="mismatch on 'num_items'"):
        PromptCursor(11, seed=0).load_state_dict(c.state_dict())
    with pytest.raises(ValueError, match="empty"):
        PromptCursor(0, seed=0)


def test_no_shuffle_is_in_order():
    assert PromptCursor(4, seed=0, shuffle=False).take(6) == [0, 1, 2, 3, 0, 1]


# ------------------------------------------------------------------------------------------------ tokenize
class CharTok:
    """A stand-in tokenizer (ord per char) with an optional chat template, to test our logic, not HF's."""

    eos_token_id = 0

    def __init__(self, template=None):
        self.chat_template = template

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(ch) for ch in text]}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_tokenize_plain_template_and_too_long():
    cfg = load_config(None, ["data.max_prompt_tokens=8"])
    ps = [Prompt("a", "1+2="), Prompt("b", "x" * 20)]
    res = tokenize_prompts(ps, CharTok(), cfg.data)
    assert res.prompts[0].prompt_ids == (1, *map(ord, "1+2=")) and res.skipped_too_long == ["b"]
    cfg2 = load_config(None, ["data.max_prompt_tokens=100", "data.system_prompt=S"])
    res2 = tokenize_prompts(ps[:1], CharTok(template="t"), cfg2.data)
    assert res2.prompts[0].prompt_ids == tuple(map(ord, "<system>S<user>1+2=<assistant>"))
    never = load_config(None, ["data.chat_template=never"])
    assert tokenize_prompts(ps[:1], CharTok(template="t"), never.data).prompts[0].prompt_ids[0] == 1
    with pytest.raises(PromptTooLongError, match="prompt b has 21 tokens"):
        tokenize_prompts(ps, CharTok(), load_config(None, ["data.max_prompt_tokens=8", "data.on_too_long=error"]).data)
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_prompts(ps, CharTok(), load_config(None, ["data.chat_template=always"]).data)
