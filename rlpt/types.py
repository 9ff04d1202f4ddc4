"""Typed values that flow between the stages of rlpt (see DESIGN.md §1).

Every arrow in the data flow is one of these dataclasses; none is a dict of strings. Shapes ride in names:
`_P` prompts, `_G` group, `_B` batch rows, `_T` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # annotations only: importing torch here would cost every `rlpt` command ~1.5 s
    import torch


@dataclass(frozen=True)
class Prompt:
    """One task instance. `answer` is the ground truth the verifier checks; free metadata rides in `meta`.

    `uid` is stable across runs (dataset name + row), so rollouts, resume and audits can refer to it.
    `prompt_ids` holds the token ids fed to the policy (chat template already applied), or is empty when the
    prompt has not been tokenized yet. A chat prompt (a `messages` column) keeps its turns in `messages`.
    """

    uid: str
    text: str
    answer: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    prompt_ids: tuple[int, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()  # a chat prompt's turns (role, content); `text` is its last turn


@dataclass(frozen=True)
class Score:
    """What a verifier returns. `correct` is None when the notion does not apply (e.g. a graded reward)."""

    reward: float
    correct: bool | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rollout:
    """One sampled completion of one prompt, with the logprobs of the sampled tokens under the engine's policy."""

    prompt: Prompt
    sample_index: int
    response_ids_T: tuple[int, ...]
    logprobs_T: tuple[float, ...]
    text: str
    finish_reason: str  # "stop" (EOS / stop string) or "length" (hit max_tokens)
    policy_version: int  # the version that sampled its first (oldest) token: the staleness bound counts it
    engine: str = ""  # the rollout engine that sampled it (audits; elastic fleets)
    versions_T: tuple[int, ...] = ()  # per response token, with partial rollouts; () = all policy_version
    # Multi-turn (rlpt.trajectory): 1 on tokens the model sampled, 0 on observation tokens; () = all sampled.
    loss_mask_T: tuple[int, ...] = ()

    @property
    def newest_version(self) -> int:
        return max(self.versions_T, default=self.policy_version)


@dataclass(frozen=True)
class ScoredRollout:
    """A rollout with its verdict. `error` is set (and `reward` comes from the configured error policy) when the
    verifier raised or timed out: never a silent None."""

    rollout: Rollout
    reward: float
    correct: bool | None
    info: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    terms: Mapping[str, float] = field(default_factory=dict)  # each reward term's value (reward.terms; else empty)


@dataclass(frozen=True)
class TrainBatch:
    """Right-padded token rows ready for a learner step.

    `loss_mask_B_T` is 1 on response tokens that carry loss and 0 on prompt and padding tokens. Logprob tensors are
    aligned with `input_ids_B_T` (position t holds log p(token t | tokens < t); position 0 is unused).
    `advantages_B_T` is per token (a sequence-level advantage is broadcast over its tokens).
    `loss_weights_B_T` makes the aggregation exact across ranks and micro-batches: the mini-batch loss is
    sum(token_loss * weight) (see rlpt/batching.py); padding rows carry weight 0.
    """

    input_ids_B_T: torch.Tensor
    attention_mask_B_T: torch.Tensor
    loss_mask_B_T: torch.Tensor
    advantages_B_T: torch.Tensor
    rollout_logprobs_B_T: torch.Tensor
    ref_logprobs_B_T: torch.Tensor | None = None
    loss_weights_B_T: torch.Tensor | None = None
    positive_B: torch.Tensor | None = None  # 1.0 where the verifier said correct (NFT / RFT)
    group_mean_B: torch.Tensor | None = None  # the row's group correct rate r_hat (NFT)

    @property
    def num_rows(self) -> int:
        return int(self.input_ids_B_T.shape[0])


@dataclass(frozen=True)
class PreferencePair:
    """A (winner, loser) pair of completions of the same prompt, for DPO."""

    prompt: Prompt
    chosen: Rollout
    rejected: Rollout


@dataclass(frozen=True)
class SamplingSpec:
    """How engines sample one step's completions (from `rollout.*` in the config)."""

    n: int
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncReport:
    """What one weight sync did: its wall seconds, the probe's worst |engine - learner| logprob difference (absent,
    not 0, on a sync the probe schedule skipped), the version every member now holds, and how often it ran again
    after an engine died inside it."""

    seconds: float
    probe_max_abs_diff: float | None  # None: the probe schedule skipped it (sync.probe_every), or no member was left
    version: int
    retries: int = 0

    def as_metrics(self) -> dict[str, float]:
        probe = {} if self.probe_max_abs_diff is None else {"sync/probe_max_abs_diff": self.probe_max_abs_diff}
        return {**probe, "sync/retries": float(self.retries)}


def request_seed(run_seed: int, step: int, position: int, n: int) -> int:
    """The sampling seed of one prompt's request. vLLM seeds child i of an n-sample request with seed + i, so
    seeds of different requests are spaced by n (else samples of neighbouring prompts would share noise)."""
    return ((run_seed * 1_000_003 + step) * 1_048_576 + position) * n % (2**62)
