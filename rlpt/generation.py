"""rlpt's own generation loop, the `hf` rollout engine's core (actors/hf_engine.py): KV-cached decoding of a batch
of prompts with a transformers causal LM, sampling with temperature, top-k and top-p, and the sampled tokens'
logprobs in the learner's definition.

Why it exists: vLLM costs tens of milliseconds per `generate` call whatever the batch (scheduling, detokenizing,
output objects) and seconds of start-up; on a small model that fixed cost is most of a step. Plain decoding in the
engine actor has neither.

Seeds: every row (prompt, sample index) draws its uniforms from its own counter-based stream (splitmix64 of a seed
made from the request seed and the sample index, and the step), and samples by inverse CDF. So a row's completion
depends on its own seed and the weights, not on which other prompts share its batch (vLLM's per-request seeds give
the same guarantee; a re-issued chunk samples the same completions up to floating-point noise of a different batch
shape).

Pure torch (and numpy for the uint64 streams): the model is any callable with the transformers causal-LM signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

import numpy as np
import torch
from torch import Tensor

from rlpt.types import SamplingSpec

_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (multiplications wrap, as the algorithm wants)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_seed(seed: int, sample_index: int) -> int:
    """A 64-bit seed for sample `sample_index` of a request seeded `seed` (splitmix64 of the pair: nearby pairs get
    unrelated streams).

    >>> row_seed(7, 0) != row_seed(7, 1) != row_seed(8, 0)
    True
    """
    with np.errstate(over="ignore"):
        z = np.uint64(seed % 2**64) * np.uint64(_GOLDEN) + np.uint64(sample_index + 1)
        return int(_splitmix64(np.array([z], dtype=np.uint64))[0])


def uniforms(seeds: Sequence[int], steps: int) -> Tensor:
    """[rows, steps] uniforms in [0, 1): u[r, t] = splitmix64(seeds[r] + (t + 1) * golden) / 2^64 in 53 bits, a
    counter-based stream per row (a row's draws depend on its seed only; no generator object per row)."""
    with np.errstate(over="ignore"):
        s = np.asarray([x % 2**64 for x in seeds], dtype=np.uint64)[:, None]
        t = np.arange(1, steps + 1, dtype=np.uint64)[None, :]
        z = _splitmix64(s + t * np.uint64(_GOLDEN))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def filtered_logits(logits_R_V: Tensor, top_k: int, top_p: float) -> Tensor:
    """-inf outside the top_k highest logits (top_k <= 0: off) and outside the smallest set of most likely tokens
    whose probability reaches top_p (1: off); the most likely token always stays.

    >>> filtered_logits(torch.tensor([[3.0, 1.0, 2.0]]), top_k=2, top_p=1.0)
    tensor([[3., -inf, 2.]])
    """
    out = logits_R_V
    if 0 < top_k < logits_R_V.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_R_V, order_R_V = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_R_V.double(), dim=-1)
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each token
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False
        out = out.masked_fill(drop_sorted.scatter(-1, order_R_V, drop_sorted), float("-inf"))
    return out


def draw(logits_R_V: Tensor, u_R: Tensor) -> Tensor:
    """One token per row by inverse CDF: the first token whose cumulative probability exceeds u (tokens of
    probability 0, e.g. filtered out, are never drawn).

    >>> draw(torch.log(torch.tensor([[0.5, 0.0, 0.5]])), torch.tensor([0.7], dtype=torch.float64))
    tensor([2])
    """
    cdf_R_V = torch.softmax(logits_R_V.double(), dim=-1).cumsum(-1)
    target_R = u_R.double() * cdf_R_V[:, -1]
    ids_R = torch.searchsorted(cdf_R_V, target_R.unsqueeze(-1), right=True).squeeze(-1)
    return ids_R.clamp(max=logits_R_V.shape[-1] - 1)


def pick(logits_R_V: Tensor, u_R: Tensor, spec: SamplingSpec) -> tuple[Tensor, Tensor]:
    """(token ids, their logprobs) for one decoding step. The logprob is the learner's: log_softmax(logits / T) of
    the unfiltered distribution (raw logits when greedy, T = 0); top-k and top-p shape only the draw."""
    logits_R_V = logits_R_V.float()
    if spec.temperature == 0.0:
        ids_R = logits_R_V.argmax(-1)
        scaled_R_V = logits_R_V
    else:
        scaled_R_V = logits_R_V / spec.temperature
        ids_R = draw(filtered_logits(scaled_R_V, spec.top_k, spec.top_p), u_R)
    logp_R = torch.log_softmax(scaled_R_V, dim=-1).gather(-1, ids_R.unsqueeze(-1)).squeeze(-1)
    return ids_R, logp_R


@dataclass
class Sampled:
    """One completion: the sampled ids (an EOS kept, as vLLM does), their logprobs, and why it ended."""

    ids: list[int]
    logprobs: list[float]
    finish_reason: str = "length"  # "stop": an EOS id or a stop string; "length": max_tokens reached


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(p) for p in prompts)
    ids_R_W = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
    lengths_R = torch.tensor([len(p) for p in prompts])
    attn_R_W = (torch.arange(width)[None, :] >= width - lengths_R[:, None]).long()
    return ids_R_W, attn_R_W


@torch.no_grad()
def generate(model: Callable[..., Any], prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int],
             spec: SamplingSpec, eos_ids: Collection[int], pad_id: int,
             stopped: Callable[[list[int]], bool] | None = None, device: torch.device | str = "cpu"
             ) -> list[list[Sampled]]:
    """spec.n completions of each prompt, in order: out[prompt][sample index]. `stopped(ids)` says whether a
    completion's text now holds a stop string (None: no stop strings). Every row decodes until all have ended;
    an ended row's later tokens are dropped."""
    if not prompt_ids:
        return []
    R = len(prompt_ids) * spec.n  # row r is sample r % n of prompt r // n
    u_R_S = uniforms([row_seed(s, i) for s in seeds for i in range(spec.n)], spec.max_tokens)
    # The prompt is read once: prefill the P distinct prompts, then repeat each one's cache for its n samples.
    ids_P_W, attn_P_W = _left_padded(prompt_ids, pad_id)
    ids_P_W, attn_P_W = ids_P_W.to(device), attn_P_W.to(device)
    pos_P_W = (attn_P_W.cumsum(-1) - 1).clamp(min=0)

    def prefill(ids: Tensor, attn: Tensor, pos: Tensor) -> tuple[Tensor, Any]:
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values

    logits, cache = prefill(ids_P_W, attn_P_W, pos_P_W)
    repeat = spec.n
    if spec.n > 1:
        try:
            cache.batch_repeat_interleave(spec.n)
        except AttributeError:  # a cache that cannot be repeated (e.g. linear-attention layers): prefill every row
            ids_P_W, attn_P_W, pos_P_W = (x.repeat_interleave(spec.n, dim=0) for x in (ids_P_W, attn_P_W, pos_P_W))
            logits, cache = prefill(ids_P_W, attn_P_W, pos_P_W)
            repeat = 1
    logits_R_V = logits.repeat_interleave(repeat, dim=0)
    attn_R_W, pos_R_W = attn_P_W.repeat_interleave(repeat, dim=0), pos_P_W.repeat_interleave(repeat, dim=0)
    done = [Sampled([], []) for _ in range(R)]
    open_rows = set(range(R))
    eos = frozenset(eos_ids)
    for t in range(spec.max_tokens):
        next_R, logp_R = pick(logits_R_V, u_R_S[:, t].to(logits_R_V.device), spec)
        ids, lps = next_R.tolist(), logp_R.tolist()
        for r in sorted(open_rows):
            s = done[r]
            s.ids.append(ids[r])
            s.logprobs.append(lps[r])
            if ids[r] in eos or (stopped is not None and stopped(s.ids)):
                s.finish_reason = "stop"
                open_rows.discard(r)
        if not open_rows or t + 1 == spec.max_tokens:
            break
        attn_R_W = torch.cat([attn_R_W, attn_R_W.new_ones(R, 1)], dim=-1)
        pos_R_W = pos_R_W[:, -1:] + 1
        out = model(input_ids=next_R.unsqueeze(-1), attention_mask=attn_R_W, position_ids=pos_R_W,
                    past_key_values=cache, use_cache=True)
        logits_R_V, cache = out.logits[:, -1], out.past_key_values
    return [done[k * spec.n:(k + 1) * spec.n] for k in range(len(prompt_ids))]
