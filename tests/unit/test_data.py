import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlpt.config import ColumnMap, ConfigError, load_config
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


def test_bad_row_names_file_line_and_column_one_based(tmp_path):
    # JSONL: the 1-based line, blank lines counted as lines (they are no rows)
    (tmp_path / "d.jsonl").write_text('{"prompt": "ok", "answer": "1"}\n\n{"prompt": "", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: column 'prompt': prompt must be a non-empty string"):
        read_prompts(tmp_path / "d.jsonl", ColumnMap())
    (tmp_path / "e.jsonl").write_text('{"prompt": "ok", "answer": null}\n')
    with pytest.raises(DataError, match=r"e\.jsonl:1: column 'answer': answer must be a string or a number"):
        read_prompts(tmp_path / "e.jsonl", ColumnMap())
    # parquet: the 1-based row, same shape of message
    pq.write_table(pa.table({"prompt": ["a", "b", None], "answer": ["1", "2", "3"]}), tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"f\.parquet: row 3: column 'prompt': prompt must be a non-empty string"):
        read_prompts(tmp_path / "f.parquet", ColumnMap())


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
        if isinstance(text, list):
            return {"input_ids": [self(t, add_special_tokens)["input_ids"] for t in text]}
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(ch) for ch in text]}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_tokenize_plain_template_and_too_long():
    cfg = load_config(None, ["data.max_prompt_tokens=8"])
    ps = [Prompt("a", "1+2="), Prompt("b", "x" * 20)]
    res = tokenize_prompts(ps, CharTok(), cfg.data, 8)
    assert res.prompts[0].prompt_ids == (1, *map(ord, "1+2=")) and res.skipped_too_long == ["b"]
    assert list(res.lengths) == [5, 21]
    cfg2 = load_config(None, ["data.max_prompt_tokens=100", "data.system_prompt=S"])
    res2 = tokenize_prompts(ps[:1], CharTok(template="t"), cfg2.data, 100)
    assert res2.prompts[0].prompt_ids == tuple(map(ord, "<system>S<user>1+2=<assistant>"))
    never = load_config(None, ["data.chat_template=never"])
    assert tokenize_prompts(ps[:1], CharTok(template="t"), never.data, 100).prompts[0].prompt_ids[0] == 1
    with pytest.raises(PromptTooLongError, match="prompt b has 21 tokens"):
        tokenize_prompts(ps, CharTok(), load_config(None, ["data.max_prompt_tokens=8", "data.on_too_long=error"]).data,
                         8)
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_prompts(ps, CharTok(), load_config(None, ["data.chat_template=always"]).data, 100)


# ---------------------------------------------------------------- data as HF datasets export it
def test_chat_messages_column_with_and_without_a_system_turn(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2="}],
             "answer": "3"},
            {"messages": [{"role": "user", "content": "2+2="}], "answer": "4"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")  # list<struct<role, content>>
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("chat.parquet", "chat.jsonl"):
        ps = read_prompts(tmp_path / name, ColumnMap(prompt="messages"))
        assert [p.text for p in ps] == ["1+2=", "2+2="] and [p.answer for p in ps] == ["3", "4"]
        assert ps[0].messages == (("system", "Be brief."), ("user", "1+2="))
        cfg = load_config(None, ["data.system_prompt=S"]).data
        res = tokenize_prompts(ps, CharTok(template="t"), cfg, 100)
        # the file's own system turn is kept; data.system_prompt fills in only where there is none
        assert res[0].prompt_ids == tuple(map(ord, "<system>Be brief.<user>1+2=<assistant>"))
        assert res[1].prompt_ids == tuple(map(ord, "<system>S<user>2+2=<assistant>"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "user"}], "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: column 'messages': prompt must be a non-empty string or a list"):
        read_prompts(tmp_path / "bad.jsonl", ColumnMap(prompt="messages"))


def test_gsm8k_answers_by_regex_and_math_answers_by_boxed(tmp_path):
    gsm = [{"question": "Natalia sold 48 clips...", "answer": "She sold 48/2 = 24 in May.\n#### 72"},
           {"question": "Weng earns $12...", "answer": "12/60 = 0.2 per minute.\n#### 10"}]
    (tmp_path / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm))
    cfg = load_config(None, ["data.task=null", f"data.path={tmp_path / 'gsm8k.jsonl'}", "data.columns.prompt=question",
                             "data.answer.extract=regex", r"data.answer.regex='####\s*(.+)$'"])
    assert [p.answer for p in load_prompts(cfg.data, 0)] == ["72", "10"]
    (tmp_path / "gsm8k_bad.jsonl").write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=r"gsm8k_bad\.jsonl:1: column 'answer': data.answer.regex"):
        read_prompts(tmp_path / "gsm8k_bad.jsonl", ColumnMap(prompt="question"), cfg.data.answer)
    math = [{"problem": "Compute 1/2 + 1/2.", "solution": r"We add: $\frac{1}{2}+\frac{1}{2} = \boxed{1}$."},
            {"problem": "Simplify.", "solution": r"First \boxed{2}, no: \boxed{\frac{3}{4}}"}]
    pq.write_table(pa.Table.from_pylist(math), tmp_path / "math.parquet")
    cfg = load_config(None, ["data.columns.prompt=problem", "data.columns.answer=solution", "data.answer.extract=boxed"])
    assert [p.answer for p in read_prompts(tmp_path / "math.parquet", cfg.data.columns, cfg.data.answer)] == [
        "1", r"\frac{3}{4}"]
    with pytest.raises(ConfigError, match="data.answer.regex is needed"):
        load_config(None, ["data.answer.extract=regex"])


def test_nested_columns_by_dotted_path(tmp_path):
    rows = [{"input": {"question": {"text": "3+4="}}, "target": {"value": 7}, "src": {"name": "a"}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nested.parquet")
    (tmp_path / "nested.jsonl").write_text(json.dumps(rows[0]) + "\n")
    cols = ColumnMap(prompt="input.question.text", answer="target.value", meta=("src.name",))
    for name in ("nested.parquet", "nested.jsonl"):
        [p] = read_prompts(tmp_path / name, cols)
        assert (p.text, p.answer, dict(p.meta)) == ("3+4=", "7", {"src.name": "a"})


def test_prompts_are_made_on_access_not_held(tmp_path):
    n = 5000
    pq.write_table(pa.table({"prompt": [f"{i}+1=" for i in range(n)], "answer": [str(i + 1) for i in range(n)]}),
                   tmp_path / "big.parquet")
    ps = read_prompts(tmp_path / "big.parquet", ColumnMap())
    assert len(ps) == n and ps[n - 1].text == f"{n - 1}+1=" and ps[n - 1].uid == f"big-{n - 1}"
    assert ps[3] == ps[3] and ps[3] is not ps[3]  # built per access, equal every time
    res = tokenize_prompts(ps, CharTok(), load_config(None).data, budget=6)
    assert len(res.lengths) == n and len(res) + len(res.skipped_too_long) == n  # "1000+1=" and up: 8 tokens > 6
    assert res[0].prompt_ids == (1, *map(ord, "0+1="))
