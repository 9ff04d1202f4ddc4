"""A generative judge's prompt and the reading of its answer, as pure functions (the engine lives in actors/judge.py).

Why here: rendering and parsing decide the reward, so they are tested by hand without an engine. Two parsers
(config `reward.terms[].parser`):

- regex: the first match of `pattern` in the judge's output; its group 1 is the value (a finite float).
- yes_no: p(yes) / (p(yes) + p(no)) at the judge's first answer position, each side summed over its candidate
  tokens ("yes", " yes", "Yes", ...). Only the engine's top-k logprobs are known there: a side that is absent from
  the top-k counts as probability 0 (it is at most the k-th probability, so the value errs towards the side seen).

A judge output that cannot be read is an explicit error row `(error_reward, None, info, "unparsable: ...")`, never
a silent 0: the prefix before ":" is the error's metric name (rlpt.loops.common.error_kind).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Collection, Mapping, Sequence

from rlpt.isolation import Verdict
from rlpt.types import Prompt

JUDGE_TEXT_CHARS = 200  # the judge output kept in a verdict's info (rollouts file, audits): enough to read, small


def render(template: str, prompt: Prompt, completion: str) -> str:
    """The judge's prompt: `template` with {prompt} (the prompt's text; a chat prompt's last turn), {completion}
    and {answer} ("" when the prompt has no ground truth). Config validation allows no other fields.

    >>> render("Q: {prompt}\\nA: {completion}\\nRef: {answer} {{ok}}", Prompt("u", "2+2?", answer="4"), "4")
    'Q: 2+2?\\nA: 4\\nRef: 4 {ok}'
    >>> render("{completion}|{answer}", Prompt("u", "q"), "x")
    'x|'
    """
    return template.format(prompt=prompt.text, completion=completion,
                           answer="" if prompt.answer is None else prompt.answer)


def unparsable(error_reward: float, text: str, why: str) -> Verdict:
    return (error_reward, None, {"judge": text[:JUDGE_TEXT_CHARS]}, f"unparsable: {why}")


def parse_regex(pattern: str, text: str, error_reward: float) -> Verdict:
    """The value is group 1 of the first match of `pattern` in the judge's `text`, as a finite float.

    >>> parse_regex("score: ([0-9]+)", "I think... score: 7/10", 0.0)
    (7.0, None, {'judge': 'I think... score: 7/10'}, None)
    >>> parse_regex("score: ([0-9]+)", "no idea", -1.0)
    (-1.0, None, {'judge': 'no idea'}, "unparsable: judge output did not match 'score: ([0-9]+)': 'no idea'")
    """
    m = re.search(pattern, text)
    if m is None:
        return unparsable(error_reward, text, f"judge output did not match {pattern!r}: {text[:80]!r}")
    group = m.group(1)
    try:
        value = float(group)
    except (TypeError, ValueError):  # TypeError: the group exists but did not take part in the match
        value = math.nan
    if not math.isfinite(value):  # "nan"/"inf" would poison the reward sum
        return unparsable(error_reward, text, f"judge output matched {pattern!r} but group 1 {group!r} is not a "
                                              f"finite number: {text[:80]!r}")
    return (value, None, {"judge": text[:JUDGE_TEXT_CHARS]}, None)


def answer_forms(word: str) -> tuple[str, ...]:
    """The surface forms a judge may use for a yes/no word: as given, capitalized, each with a leading space (a
    BPE vocabulary often has " Yes" as its own token).

    >>> answer_forms("yes")
    ('yes', ' yes', 'Yes', ' Yes')
    """
    forms = (word, " " + word, word.capitalize(), " " + word.capitalize())
    return tuple(dict.fromkeys(forms))  # ordered dedup: "Yes" given as is repeats its capitalized form


def single_token_ids(encode: Callable[[str], Sequence[int]], word: str) -> frozenset[int]:
    """The token ids of `word`'s forms that encode to exactly one token (`encode` adds no special tokens): the only
    ones a first-position logprob can speak for.

    >>> sorted(single_token_ids({"no": [7], " no": [3, 7], "No": [8], " No": [9]}.__getitem__, "no"))
    [7, 8, 9]
    """
    return frozenset(ids[0] for ids in map(encode, answer_forms(word)) if len(ids) == 1)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def yes_no_value(top_logprobs: Mapping[int, float], yes_ids: Collection[int], no_ids: Collection[int]
                 ) -> float | None:
    """p(yes) / (p(yes) + p(no)) from the first answer position's top-k logprobs (token id -> logprob); None when
    neither side is among them (the caller then writes an "unparsable: ..." row). Computed in log space, so two
    tiny probabilities still give their true ratio instead of 0/0.

    >>> round(yes_no_value({5: math.log(0.6), 6: math.log(0.1), 7: math.log(0.2)}, yes_ids=[5, 6], no_ids=[7]), 6)
    0.777778
    >>> yes_no_value({5: -0.1}, yes_ids=[5], no_ids=[7]), yes_no_value({9: -0.1}, yes_ids=[5], no_ids=[7])
    (1.0, None)
    """
    yes = [lp for t, lp in top_logprobs.items() if t in yes_ids]
    no = [lp for t, lp in top_logprobs.items() if t in no_ids]
    if not yes and not no:
        return None
    if not no:
        return 1.0
    if not yes:
        return 0.0
    # p_yes / (p_yes + p_no) = sigmoid(log p_yes - log p_no)
    diff = _logsumexp(yes) - _logsumexp(no)
    return 1.0 / (1.0 + math.exp(-diff)) if diff >= 0 else math.exp(diff) / (1.0 + math.exp(diff))
