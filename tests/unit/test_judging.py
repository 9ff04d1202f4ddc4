"""The judge's prompt rendering and answer parsing (rlpt/judging.py), with hand-computed values."""

from __future__ import annotations

import math

import pytest

from rlpt.config import JudgeTerm
from rlpt.judging import answer_forms, parse_regex, render, single_token_ids, yes_no_value
from rlpt.loops.common import error_kind
from rlpt.types import Prompt

pytestmark = pytest.mark.unit


def test_render_fills_prompt_completion_and_answer() -> None:
    p = Prompt(uid="u", text="What is 2+3?", answer="5")
    assert render("Q: {prompt}\nA: {completion}\nGold: {answer}", p, "five") == "Q: What is 2+3?\nA: five\nGold: 5"


def test_render_answer_none_is_empty_and_braces_in_values_stay_literal() -> None:
    # Values are inserted once, never formatted again: braces in a completion cannot inject fields.
    p = Prompt(uid="u", text="{answer}")
    assert render("[{prompt}] [{completion}] [{answer}] {{x}}", p, "{prompt}") == "[{answer}] [{prompt}] [] {x}"


def test_render_uses_a_chat_prompts_text() -> None:
    p = Prompt(uid="u", text="last turn", messages=(("system", "be brief"), ("user", "last turn")))
    assert render("{prompt}|{completion}", p, "c") == "last turn|c"


def test_every_template_config_accepts_renders() -> None:
    term = JudgeTerm(name="j", path="/m", template="P={prompt} C={completion} A={answer}")
    assert render(term.template, Prompt("u", "p", answer="a"), "c") == "P=p C=c A=a"


@pytest.mark.parametrize(("text", "value"), [
    ("Score: 7", 7.0), ("score -2.5 then 9", -2.5), ("0.25", 0.25), ("x 10 y 3", 10.0),  # the first match wins
])
def test_parse_regex_reads_group_one_of_the_first_match(text: str, value: float) -> None:
    pattern = JudgeTerm.model_fields["pattern"].default
    assert parse_regex(pattern, text, error_reward=-1.0) == (value, None, {"judge": text}, None)


def test_parse_regex_no_match_is_an_unparsable_error_row() -> None:
    reward, correct, info, error = parse_regex(r"Score: (\d+)", "I cannot decide", error_reward=-1.0)
    assert (reward, correct, info) == (-1.0, None, {"judge": "I cannot decide"})
    assert error == "unparsable: judge output did not match 'Score: (\\\\d+)': 'I cannot decide'"
    assert error_kind(error) == "unparsable"


@pytest.mark.parametrize("text", ["verdict: nan", "verdict: inf", "verdict: abc"])
def test_parse_regex_group_that_is_not_a_finite_number_is_unparsable(text: str) -> None:
    reward, _, _, error = parse_regex(r"verdict: (\w+)", text, error_reward=0.5)
    assert reward == 0.5 and error is not None and error.startswith("unparsable: ") and "is not a finite" in error


def test_parse_regex_optional_group_that_did_not_take_part_is_unparsable() -> None:
    _, _, _, error = parse_regex(r"a(\d)?", "a", error_reward=0.0)
    assert error is not None and error.startswith("unparsable: ")


def test_parse_regex_truncates_what_it_keeps() -> None:
    text = "9" + "x" * 500
    _, _, info, _ = parse_regex(r"(\d)", text, 0.0)
    assert info == {"judge": text[:200]}
    _, _, info, error = parse_regex(r"(NEVER)", text, 0.0)
    assert info == {"judge": text[:200]} and error is not None and repr(text[:80]) in error and len(error) < 200


def test_yes_no_value_hand_computed() -> None:
    lp = {1: math.log(0.5), 2: math.log(0.1), 3: math.log(0.2), 4: math.log(0.15)}
    # yes = ids 1, 2 -> 0.6; no = id 3 -> 0.2 (id 4 is neither): 0.6 / 0.8
    assert yes_no_value(lp, yes_ids={1, 2}, no_ids={3}) == pytest.approx(0.75, abs=1e-12)
    assert yes_no_value(lp, yes_ids={3}, no_ids={1, 2}) == pytest.approx(0.25, abs=1e-12)


def test_yes_no_value_one_side_missing_and_none_present() -> None:
    lp = {1: -0.5, 2: -3.0}
    assert yes_no_value(lp, yes_ids={1}, no_ids={9}) == 1.0
    assert yes_no_value(lp, yes_ids={9}, no_ids={2}) == 0.0
    assert yes_no_value(lp, yes_ids={8}, no_ids={9}) is None
    assert yes_no_value({}, yes_ids={1}, no_ids={2}) is None


def test_yes_no_value_tiny_probabilities_keep_their_ratio() -> None:
    # exp(-1000) underflows to 0 in linear space; the log-space ratio is still 1 / (1 + e^-2).
    value = yes_no_value({1: -1000.0, 2: -1002.0}, yes_ids={1}, no_ids={2})
    assert value == pytest.approx(1 / (1 + math.exp(-2)), abs=1e-12)
    assert yes_no_value({1: -2000.0, 2: 0.0}, yes_ids={1}, no_ids={2}) == 0.0


def test_answer_forms_and_single_token_ids() -> None:
    assert answer_forms("no") == ("no", " no", "No", " No")
    assert answer_forms("Yes") == ("Yes", " Yes")
    vocab = {"yes": [5], " yes": [1, 5], "Yes": [6], " Yes": [7, 8]}
    assert single_token_ids(vocab.__getitem__, "yes") == frozenset({5, 6})
    assert single_token_ids(lambda s: [], "yes") == frozenset()
