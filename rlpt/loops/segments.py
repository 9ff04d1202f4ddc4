"""Partial rollouts (rollout.partial_tokens = N): a request is generated in segments of at most N tokens, and the
engines may take new weights between two segments (the asynchronous loop's sync takes its turn there), so a long
completion does not hold the learner's sync back.

Each response token is stamped with the policy version that sampled it (`Rollout.versions_T`); `policy_version`
stays the first segment's, the oldest, which the staleness bound counts. A continuation is the original prompt's
token ids followed by the response ids so far, exactly (no re-tokenisation); its sampling seed derives from the
request's seed, the sample's index and the segment, so it is reproducible and never reuses a segment's noise.
The engine decodes the whole response again at each segment (decoding pieces apart would lose, e.g., a
SentencePiece leading space); the verifier scores the final text.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from rlpt.types import Prompt, Rollout, SamplingSpec, request_seed

# (prompts, seeds, spec, prefix_lens or None) -> rollouts in order (RolloutService.generate, one engine round)
Generate = Callable[[Sequence[Prompt], Sequence[int], SamplingSpec, Sequence[int] | None], list[Rollout]]


def continuation(r: Rollout) -> Prompt:
    """The prompt that continues `r`: its prompt ids followed by the response ids sampled so far."""
    return replace(r.prompt, prompt_ids=tuple(r.prompt.prompt_ids) + tuple(r.response_ids_T))


def stamped(r: Rollout) -> Rollout:
    """A first segment, every token stamped with the version that sampled it."""
    return replace(r, versions_T=(r.policy_version,) * len(r.response_ids_T))


def merged(head: Rollout, tail: Rollout) -> Rollout:
    """`head` followed by the segment `tail` that continued it (tail's text is the whole response's, decoded
    once; its prompt is the continuation's, so head's is kept)."""
    return replace(head, response_ids_T=head.response_ids_T + tail.response_ids_T,
                   logprobs_T=head.logprobs_T + tail.logprobs_T, text=tail.text, finish_reason=tail.finish_reason,
                   versions_T=head.versions_T + (tail.policy_version,) * len(tail.response_ids_T))


def segment_seed(request_seed_: int, sample_index: int, segment: int) -> int:
    """The seed of one sample's continuation in one segment (request seeds are spaced by n, so request seed +
    sample index is unique to the sample).

    >>> len({segment_seed(100, 0, 1), segment_seed(100, 1, 1), segment_seed(100, 0, 2), segment_seed(102, 0, 1)})
    4
    """
    return request_seed(request_seed_ + sample_index, segment, 0, 1)


def generate_in_segments(generate: Generate, prompts: Sequence[Prompt], seeds: Sequence[int], spec: SamplingSpec,
                         tokens: int) -> list[Rollout]:
    """The rollouts of `prompts` (n = spec.n each, in order), generated `tokens` at a time: every sample still
    running after a segment (finish "length" short of spec.max_tokens) is continued in the next call."""
    if tokens <= 0:
        raise ValueError(f"rollout.partial_tokens must be > 0 here; got {tokens}")
    out = [stamped(r) for r in generate(prompts, seeds, replace(spec, max_tokens=min(tokens, spec.max_tokens)), None)]
    segment = 1
    while True:
        todo = [k for k, r in enumerate(out) if r.finish_reason == "length" and len(r.response_ids_T) < spec.max_tokens]
        if not todo:
            return out
        done = len(out[todo[0]].response_ids_T)  # every running sample has segment x tokens by now
        more = generate([continuation(out[k]) for k in todo],
                        [segment_seed(seeds[k // spec.n], out[k].sample_index, segment) for k in todo],
                        replace(spec, n=1, max_tokens=min(tokens, spec.max_tokens - done)), [done] * len(todo))
        if len(more) != len(todo):
            raise RuntimeError(f"partial rollouts: {len(more)} continuations came back for {len(todo)} requests")
        for k, tail in zip(todo, more):
            out[k] = merged(out[k], tail)
        segment += 1
