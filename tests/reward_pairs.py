"""Preference pairs on the default task (arith, "3+4="), labelled by the numeric verifier, for reward-model tests.

Candidates look like what the built-in policy writes (rollout.max_new_tokens = 3 random-ish tokens of the tiny
vocabulary). Each pair is contrastive: one candidate starts with the answer, the other (mostly) with another digit,
or the answer and one more digit, followed by the SAME tail, so the reward model can only tell them apart by the arithmetic, not by the junk after
it (a first version with unmatched tails gave a reward model the policy beat with tails it liked: "8L+" for
3+3; with tails matched, "344" for 2+1). The numeric verifier labels both sides and only (correct, incorrect) pairs are kept: nothing here decides
correctness but the verifier.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlpt.config import ArithConfig
from rlpt.data.synthetic import arith_prompts
from rlpt.verifiers import VERIFIERS


def candidate_pair(tokenizer, answer: str, rng: random.Random) -> tuple[str, str]:
    vocab = [t for t in range(len(tokenizer)) if t not in tokenizer.all_special_ids]
    ids = [rng.choice(vocab) for _ in range(3)]
    tail = tokenizer.decode(ids[1:], skip_special_tokens=True)
    u = rng.random()
    if u < 0.25:  # some plain junk too, as a random-init policy writes
        return answer + tail, tokenizer.decode(ids, skip_special_tokens=True)
    if u < 0.5:  # the answer, then more digits: another number (the verifier reads the first number whole)
        return answer + tail, answer + str(rng.randint(0, 9)) + tail
    return answer + tail, str(rng.choice([d for d in range(10) if str(d) != answer])) + tail


def write_pairs(tokenizer, out: Path, seed: int = 0, per_prompt: int = 6) -> Path:
    verify = VERIFIERS["numeric"]
    rng = random.Random(seed)
    rows = []
    for p in arith_prompts(ArithConfig(), seed):
        for _ in range(per_prompt):
            a, b = candidate_pair(tokenizer, p.answer, rng)
            if verify(p, a).correct and not verify(p, b).correct:
                rows.append({"prompt": p.text, "chosen": a, "rejected": b})
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out
