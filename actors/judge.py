"""A generative-judge reward actor: a causal LM in its own vLLM engine, asked the term's template about each rollout
and read by the term's parser (rlpt/judging.py). A `ScorePool` (actors/verifier.py) drives a pool of them.

The judge is never weight-synced, so its engine is a plain `vllm.LLM` (no worker extension), in-process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, executor "uni") as the rollout engines on CPU. Prompts are tokenized here with
rlpt's tokenizer loader and sent as token ids: the length check and the yes/no token ids then use exactly the ids the
engine sees (AutoTokenizer may swap a saved tokenizer's pre-tokenizer; see notes/cpu-stack.md).

Every item gets exactly one Verdict (reward, None, {"judge": output}, error): a prompt too long for the engine is a
"too_long: ..." row for that item alone, an output the parser cannot read an "unparsable: ..." row, and an engine
failure on a batch "judge_error: ..." rows for that batch; nothing here raises once the engine is up.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from actors.startup import freeze_imported_heap
from rlpt.config import JudgeTerm
from rlpt.isolation import Verdict, VerifyItem
from rlpt.judging import JUDGE_TEXT_CHARS, parse_regex, render, single_token_ids, unparsable, yes_no_value

YES_NO_TOP_K = 20  # logprobs read at the first answer position (vLLM's default max_logprobs)


def yes_no_ids(tokenizer: Any, term: JudgeTerm) -> tuple[frozenset[int], frozenset[int]]:
    """The single-token ids of the term's yes and no words; a word with none cannot be read from one position."""
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    yes, no = single_token_ids(encode, term.yes), single_token_ids(encode, term.no)
    for key, word, ids in (("yes", term.yes, yes), ("no", term.no, no)):
        if not ids:
            raise ValueError(f"reward.terms.{term.name}.{key}: no form of {word!r} (as is, capitalized, with a leading "
                             f"space) is a single token of {term.path}'s tokenizer; the yes_no parser reads one "
                             f"token: pick a word that is one token, or use parser: regex")
    if yes & no:
        raise ValueError(f"reward.terms.{term.name}: yes {term.yes!r} and no {term.no!r} share token ids "
                         f"{sorted(yes & no)}")
    return yes, no


class JudgeWorker:
    """Ray actor body (wrapped with ray.remote by actors/launch.py): one judge engine for one reward term."""

    def __init__(self, name: str, term: JudgeTerm, dtype: str = "float32", seed: int = 0,
                 log_dir: str | None = None) -> None:
        from actors.logs import redirect_output
        from rlpt.models import load_tokenizer

        redirect_output(log_dir, name)
        self.name, self.term = name, term
        self.tokenizer = load_tokenizer(term.path)
        # Resolved before the engine starts: a word that is not one token is a config error, found in seconds.
        none: frozenset[int] = frozenset()
        self.yes_ids, self.no_ids = yes_no_ids(self.tokenizer, term) if term.parser == "yes_no" else (none, none)
        self.llm = self._engine(term, dtype, seed)

    @staticmethod
    def _engine(term: JudgeTerm, dtype: str, seed: int) -> Any:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: no engine-core subprocess
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the default pins the engine to core 0
        from vllm import LLM

        freeze_imported_heap()  # before LLM(...): its own five gc.collect() calls then skip the imports' heap
        # On a GPU the judge may share a device (num_gpus < 1): take at most its reserved share of the memory.
        gpu_share = min(0.9, term.num_gpus) if term.num_gpus > 0 else 0.9
        return LLM(model=term.path, tokenizer=term.path, dtype=dtype, seed=seed, enforce_eager=True,
                   max_model_len=term.max_model_len, enable_prefix_caching=False, gpu_memory_utilization=gpu_share,
                   distributed_executor_backend="uni", max_logprobs=YES_NO_TOP_K)

    @property
    def chat(self) -> bool:
        """Whether the judge prompt goes in as a user turn of the tokenizer's chat template."""
        return self.term.chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def ping(self) -> str:
        return self.name

    def score_items(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        """One Verdict per item, in order, generated `term.batch_size` items at a time."""
        out: list[Verdict] = []
        for start in range(0, len(items), self.term.batch_size):
            out.extend(self._score_batch(items[start:start + self.term.batch_size]))
        return out

    def prompt_ids(self, item: VerifyItem) -> list[int]:
        """The judge's input ids for one item: the rendered template, as a user turn of the chat template if used."""
        prompt, completion = item
        text = render(self.term.template, prompt, completion)
        if self.chat:
            # Render to text, then tokenize (as rlpt.data.encode): the template writes its own special tokens.
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def _score_batch(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        term = self.term
        rows: list[Verdict | None] = [None] * len(items)
        todo: list[tuple[int, list[int]]] = []
        for i, item in enumerate(items):
            try:
                ids = self.prompt_ids(item)
            except Exception as e:  # noqa: BLE001 - e.g. a chat template that rejects the turn: this row only
                rows[i] = (term.error_reward, None, {}, f"judge_error: {self.name}: rendering the judge prompt: "
                                                        f"{type(e).__name__}: {e}")
                continue
            too_long = self._too_long(len(ids))
            if too_long is None:
                todo.append((i, ids))
            else:
                rows[i] = (term.error_reward, None, {}, too_long)
        if todo:
            try:
                verdicts = self._judge([ids for _, ids in todo])
            except Exception as e:  # noqa: BLE001 - one bad batch becomes explicit error rows, not a dead pool
                verdicts = [(term.error_reward, None, {}, f"judge_error: {self.name}: {type(e).__name__}: {e}")
                            ] * len(todo)
            for (i, _), v in zip(todo, verdicts):
                rows[i] = v
        return rows  # type: ignore[return-value] - every slot is filled above

    def _too_long(self, n: int) -> str | None:
        """Why the engine must not get a prompt of n tokens (it would fail the whole batch), or None."""
        term = self.term
        if n == 0:  # vLLM rejects an empty prompt; only a template of just "{completion}" and no BOS can make one
            return "empty_prompt: the rendered judge prompt has 0 tokens"
        # The answer must fit too: a prompt leaving fewer than max_new_tokens would be judged on a cut answer.
        if n + term.max_new_tokens > term.max_model_len:
            return (f"too_long: judge prompt of {n} tokens + max_new_tokens {term.max_new_tokens} exceeds the judge's "
                    f"max_model_len {term.max_model_len}")
        return None

    def _judge(self, prompt_ids: Sequence[list[int]]) -> list[Verdict]:
        from vllm import SamplingParams

        yes_no = self.term.parser == "yes_no"
        params = SamplingParams(temperature=0.0, max_tokens=self.term.max_new_tokens,
                                logprobs=YES_NO_TOP_K if yes_no else None, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        return [self._verdict(o.outputs[0]) for o in outs]

    def _verdict(self, completion: Any) -> Verdict:
        term = self.term
        text = self.tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
        if term.parser == "regex":
            return parse_regex(term.pattern, text, term.error_reward)
        first = {t: lp.logprob for t, lp in completion.logprobs[0].items()} if completion.logprobs else {}
        value = yes_no_value(first, self.yes_ids, self.no_ids)
        if value is None:
            return unparsable(term.error_reward, text, f"neither {term.yes!r} nor {term.no!r} is among the judge's "
                                                       f"top {YES_NO_TOP_K} first tokens: {text[:80]!r}")
        return (value, None, {"judge": text[:JUDGE_TEXT_CHARS]}, None)
