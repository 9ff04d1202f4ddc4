"""`rlpt eval`: sample completions for the configured prompts with HF transformers, verify them, log the results.

Single-process and Ray-free, so it runs anywhere the library imports: a quick check of a model or checkpoint on a
task, with the same data, verifier, run-directory and metrics code as training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from rlpt.config import RlptConfig, save_config
from rlpt.data import PromptCursor, load_prompts, tokenize_prompts
from rlpt.loops.common import correct_frac
from rlpt.metrics import MetricsWriter
from rlpt.models import load_tokenizer, resolve_model_path
from rlpt.preflight import PreflightError, inspect_model, run_shape
from rlpt.rollout_log import write_rollouts
from rlpt.scoring import score_rollout
from rlpt.types import Prompt, Rollout, ScoredRollout
from rlpt.verifiers import load_verifier


@dataclass(frozen=True)
class EvalResult:
    run_dir: Path
    num_prompts: int
    num_samples: int
    reward_mean: float
    correct_frac: float | None  # None: the verifier gives no correctness (unknown is not zero)
    error_count: int
    tokens_per_s: float


def _response(ids: list[int], eos_ids: Sequence[int], pad_id: int, max_new: int) -> tuple[list[int], str]:
    """Cut a generated row at its first EOS, any of the model's (kept, as vLLM does) and report why it ended."""
    ends = [i for i, t in enumerate(ids) if t in eos_ids]
    if ends:
        return ids[: ends[0] + 1], "stop"
    while ids and ids[-1] == pad_id and pad_id not in eos_ids:
        ids = ids[:-1]
    return ids, "length" if len(ids) >= max_new else "stop"


@torch.no_grad()
def generate_hf(model: Any, tok: Any, prompts: Sequence[Prompt], cfg: RlptConfig, version: int,
                eos_ids: Sequence[int]) -> list[Rollout]:
    """G sampled completions per prompt with transformers' `generate`, with the sampled tokens' logprobs."""
    r = cfg.rollout
    width = max(len(p.prompt_ids) for p in prompts)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p.prompt_ids)) + list(p.prompt_ids) for p in prompts])
    attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(p.prompt_ids) for p in prompts])[:, None])
    out = model.generate(
        input_ids=input_ids, attention_mask=attn.long(), do_sample=True, temperature=r.temperature, top_p=r.top_p,
        top_k=r.top_k if r.top_k > 0 else None, max_new_tokens=r.max_new_tokens,
        num_return_sequences=r.samples_per_prompt, return_dict_in_generate=True, output_scores=True,
        eos_token_id=list(eos_ids), pad_token_id=pad,
    )
    logps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    rollouts = []
    for row in range(out.sequences.shape[0]):
        prompt = prompts[row // r.samples_per_prompt]
        ids, reason = _response(out.sequences[row, width:].tolist(), eos_ids, pad, r.max_new_tokens)
        rollouts.append(Rollout(
            prompt=prompt, sample_index=row % r.samples_per_prompt, response_ids_T=tuple(ids),
            logprobs_T=tuple(float(x) for x in logps[row, : len(ids)]),
            text=tok.decode(ids[:-1] if reason == "stop" and ids and ids[-1] in eos_ids else ids,
                            skip_special_tokens=True), finish_reason=reason, policy_version=version,
        ))
    return rollouts


def evaluate(cfg: RlptConfig, run_dir: Path, num_prompts: int, checkpoint: Path | None = None,
             progress: Any = None) -> EvalResult:
    from transformers import AutoModelForCausalLM

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.run.seed)
    model_path = checkpoint or resolve_model_path(cfg)
    tok = load_tokenizer(cfg.model.tokenizer_path or model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, cfg.model.dtype)).eval()
    facts = inspect_model(Path(model_path), tok)
    budget = run_shape(cfg, facts, tok).prompt_budget
    prompts = tokenize_prompts(load_prompts(cfg.data, cfg.run.seed), tok, cfg.data, budget).prompts
    if not prompts:
        raise PreflightError(f"every prompt is longer than the prompt budget of {budget} tokens "
                             f"(data.max_prompt_tokens={cfg.data.max_prompt_tokens})")
    cursor = PromptCursor(len(prompts), cfg.run.seed, cfg.data.shuffle)
    verify = load_verifier(cfg.verifier.name)
    scored: list[ScoredRollout] = []
    start, chunk = time.perf_counter(), cfg.rollout.prompts_per_step
    for done in range(0, num_prompts, chunk):
        batch = [prompts[i] for i in cursor.take(min(chunk, num_prompts - done))]
        scored += [score_rollout(verify, ro, cfg.verifier.error_reward) for ro in generate_hf(model, tok, batch, cfg, 0, facts.eos_ids)]
        if progress is not None:
            progress(done + len(batch), num_prompts, sum(s.reward for s in scored) / len(scored))
    elapsed = time.perf_counter() - start
    tokens = sum(len(s.rollout.response_ids_T) for s in scored)
    result = EvalResult(
        run_dir=run_dir, num_prompts=num_prompts, num_samples=len(scored),
        reward_mean=sum(s.reward for s in scored) / len(scored),
        correct_frac=correct_frac(scored),
        error_count=sum(1 for s in scored if s.error is not None), tokens_per_s=tokens / elapsed,
    )
    write_rollouts(run_dir, 0, scored)
    with MetricsWriter(run_dir, tensorboard=cfg.run.tensorboard) as writer:
        known = {} if result.correct_frac is None else {"eval/correct_frac": result.correct_frac}
        writer.write(0, {"eval/reward_mean": result.reward_mean, **known, "eval/errors": float(result.error_count),
                         "eval/tokens_per_s": result.tokens_per_s, "tokens/generated": float(tokens),
                         "timing/eval": elapsed})
    return result
