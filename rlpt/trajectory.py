"""Multi-turn trajectories, token in / token out (issue 17): what the engine sampled is kept as its token ids and
logprobs, observations are tokenized once and appended, and the learner gets exactly the ids the engine saw.

The most common multi-turn bug in RL post-training is re-tokenization: decode the model's turns to text, render the
conversation again, encode it, and the ids differ from the sampled ones (a merge across a turn boundary, a dropped
space), so the learner trains on tokens the engine never sampled. Here nothing is ever re-encoded: a trajectory is
the prompt ids followed by turns of ids, each either sampled (with its logprobs and policy version: it carries
loss) or an observation (tokenized here, once: no loss). The engine continues from `context_ids`, the learner
trains on `response_ids_T` with `loss_mask_T`.

An observation goes in through the chat template's turn format (`observation_ids`): the text the template writes
between the end of an assistant turn and the start of the next assistant turn, with the observation as a user or
tool message. The model's turn usually ends with its end-of-turn token (sampled); whatever the template writes
after that token (e.g. ChatML's newline after `<|im_end|>`) is added in front of the observation, and a turn cut
by the token limit gets the whole end-of-turn text, so the next turn starts where the template would start it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from rlpt.types import Prompt, Rollout

_MARK = "\x00rlpt-turn\x00"  # stands for an assistant turn's content when the template is rendered for its frame
_FRAME = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _MARK}]


@dataclass(frozen=True)
class Turn:
    ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # the engine's logprobs of a sampled turn; () for an observation
    sampled: bool  # a model turn (carries loss) or an observation (does not)
    version: int  # the policy version that sampled a model turn; for an observation, the one of the turn before


@dataclass(frozen=True)
class Trajectory:
    prompt: Prompt
    sample_index: int
    turns: tuple[Turn, ...] = ()

    def with_model_turn(self, ids: tuple[int, ...], logprobs: tuple[float, ...], version: int) -> "Trajectory":
        if len(ids) != len(logprobs):
            raise ValueError(f"a sampled turn needs one logprob per token: {len(ids)} ids, {len(logprobs)} logprobs")
        return replace(self, turns=self.turns + (Turn(tuple(ids), tuple(logprobs), True, version),))

    def with_observation(self, ids: tuple[int, ...]) -> "Trajectory":
        version = self.turns[-1].version if self.turns else 0
        return replace(self, turns=self.turns + (Turn(tuple(ids), (), False, version),))

    @property
    def context_ids(self) -> tuple[int, ...]:
        """What the engine continues from: the prompt and every turn so far."""
        return self.prompt.prompt_ids + self.response_ids_T

    @property
    def response_ids_T(self) -> tuple[int, ...]:
        return tuple(t for turn in self.turns for t in turn.ids)

    @property
    def logprobs_T(self) -> tuple[float, ...]:
        """The engine's logprob of each sampled token; 0.0 on observation tokens (masked out of every loss)."""
        return tuple(lp for turn in self.turns for lp in (turn.logprobs if turn.sampled else (0.0,) * len(turn.ids)))

    @property
    def loss_mask_T(self) -> tuple[int, ...]:
        """1 on tokens the model sampled, 0 on observation tokens."""
        return tuple(int(turn.sampled) for turn in self.turns for _ in turn.ids)

    @property
    def versions_T(self) -> tuple[int, ...]:
        return tuple(turn.version for turn in self.turns for _ in turn.ids)

    @property
    def model_turns(self) -> int:
        return sum(1 for turn in self.turns if turn.sampled)

    def to_rollout(self, text: str, finish_reason: str, engine: str) -> Rollout:
        """The trajectory as the learner takes it: every token after the prompt, observation tokens masked out.
        `policy_version` is the oldest sampled turn's (the staleness bound counts the oldest token)."""
        versions = [turn.version for turn in self.turns if turn.sampled]
        if not versions:
            raise ValueError(f"trajectory {self.prompt.uid}/{self.sample_index} has no model turn")
        return Rollout(self.prompt, self.sample_index, self.response_ids_T, self.logprobs_T, text, finish_reason,
                       min(versions), engine, self.versions_T, self.loss_mask_T)


def turn_end(tokenizer: Any) -> str | None:
    """The text the chat template writes after an assistant turn's content (its end-of-turn token and what
    follows it), or None without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    closed = tokenizer.apply_chat_template(_FRAME, tokenize=False)
    return closed[closed.index(_MARK) + len(_MARK):]


class Observations:
    """Tokenizes observations for one tokenizer and role (`ids`); the template's frame is rendered once, here."""

    def __init__(self, tokenizer: Any, role: str, end_ids: Sequence[int] = ()) -> None:
        self.tokenizer, self.role = tokenizer, role
        # A sampled last token counts as (the start of) the template's end-of-turn text only when it is an EOS the
        # model declares or a special token: a turn cut after a plain "<" is not "<|im_end|>" begun.
        self.end_ids = frozenset(end_ids) | frozenset(getattr(tokenizer, "all_special_ids", ()) or ())
        self.after = turn_end(tokenizer)
        self.closed = None if self.after is None else tokenizer.apply_chat_template(_FRAME, tokenize=False)

    def ids(self, observation: str, last_token: int | None) -> list[int]:
        """The ids to append after a model turn for an observation: the end of the assistant turn the model did not
        sample, the observation as a `role` message in the template's format, and the opening of the next
        assistant turn. `last_token` is the model turn's last sampled id (None for an empty turn). Without a chat
        template: the observation's own text between newlines."""
        tok = self.tokenizer
        if self.after is None or self.closed is None:
            return list(tok("\n" + observation + "\n", add_special_tokens=False)["input_ids"])
        sampled_end = "" if last_token is None or last_token not in self.end_ids else tok.decode([last_token])
        tail = self.after[len(sampled_end):] if sampled_end and self.after.startswith(sampled_end) else self.after
        more = tok.apply_chat_template(_FRAME + [{"role": self.role, "content": observation}], tokenize=False,
                                       add_generation_prompt=True)
        if not more.startswith(self.closed):
            raise ValueError(f"the chat template does not render a {self.role!r} message after an assistant turn by "
                             f"appending to it (it rewrites earlier turns); multi-turn needs an append-only template")
        return list(tok(tail + more[len(self.closed):], add_special_tokens=False)["input_ids"])


def observation_ids(tokenizer: Any, observation: str, role: str, last_token: int | None) -> list[int]:
    """`Observations(tokenizer, role).ids(observation, last_token)`, for one observation."""
    return Observations(tokenizer, role).ids(observation, last_token)
