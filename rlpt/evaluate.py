"""`rlpt eval`: greedy and sampled completions of the evaluation set (`eval.*`, the set training evaluates on;
else the configured data) with HF transformers, verified, with the figures training logs (greedy pass@1, pass@k,
mean@n: rlpt.eval_stats).

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
from rlpt.eval_stats import eval_metrics
from rlpt.loops.common import correct_frac
from rlpt.metrics import MetricsWriter
from rlpt.models import load_tokenizer, resolve_model_path
from rlpt.prepare import evaluation_set
from rlpt.preflight import PreflightError, inspect_model, run_shape
from rlpt.rollout_log import write_rollouts
from rlpt.scoring import score_rollout
from rlpt.types import Prompt, Rollout, SamplingSpec, ScoredRollout
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
    figures: dict[str, float]  # eval/* as training logs them (rlpt.eval_stats)


def _response(ids: list[int], eos_ids: Sequence[int], pad_id: int, max_new: int) -> tuple[list[int], str]:
    """Cut a generated row at its first EOS, any of the model's (kept, as vLLM does) and report why it ended."""
    ends = [i for i, t in enumerate(ids) if t in eos_ids]
    if ends:
        return ids[: ends[0] + 1], "stop"
    while ids and ids[-1] == pad_id and pad_id not in eos_ids:
        ids = ids[:-1]
    return ids, "length" if len(ids) >= max_new else "stop"


@torch.no_grad()
def generate_hf(model: Any, tok: Any, prompts: Sequence[Prompt], spec: SamplingSpec, version: int,
                eos_ids: Sequence[int]) -> list[Rollout]:
    """spec.n completions per prompt with transformers' `generate` (greedy at temperature 0), with the sampled
    tokens' logprobs."""
    width = max(len(p.prompt_ids) for p in prompts)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p.prompt_ids)) + list(p.prompt_ids) for p in prompts])
    attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(p.prompt_ids) for p in prompts])[:, None])
    sampling = {"do_sample": False} if spec.temperature == 0.0 else {
        "do_sample": True, "temperature": spec.temperature, "top_p": spec.top_p,
        "top_k": spec.top_k if spec.top_k > 0 else None}
    out = model.generate(
        input_ids=input_ids, attention_mask=attn.long(), max_new_tokens=spec.max_tokens, num_return_sequences=spec.n,
        return_dict_in_generate=True, output_scores=True, eos_token_id=list(eos_ids), pad_token_id=pad, **sampling,
    )
    logps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    rollouts = []
    for row in range(out.sequences.shape[0]):
        prompt = prompts[row // spec.n]
        ids, reason = _response(out.sequences[row, width:].tolist(), eos_ids, pad, spec.max_tokens)
        rollouts.append(Rollout(
            prompt=prompt, sample_index=row % spec.n, response_ids_T=tuple(ids),
            logprobs_T=tuple(float(x) for x in logps[row, : len(ids)]),
            text=tok.decode(ids[:-1] if reason == "stop" and ids and ids[-1] in eos_ids else ids,
                            skip_special_tokens=True), finish_reason=reason, policy_version=version,
        ))
    return rollouts


def eval_prompts(cfg: RlptConfig, tok: Any, budget: int, num_prompts: int) -> list[Prompt]:
    """The evaluation set when the config has one (eval.holdout / eval.path: the same prompts training evaluates
    on), else the first `num_prompts` of the data in the run's order."""
    if cfg.eval.path is not None:  # its own file: the training data is not needed (nor read)
        return list(evaluation_set(cfg, [], tok, budget)[1])[:num_prompts]
    prompts = tokenize_prompts(load_prompts(cfg.data, cfg.run.seed), tok, cfg.data, budget).prompts
    if not prompts:
        raise PreflightError(f"every prompt is longer than the prompt budget of {budget} tokens "
                             f"(data.max_prompt_tokens={cfg.data.max_prompt_tokens})")
    if cfg.eval.has_set:
        return list(evaluation_set(cfg, prompts, tok, budget)[1])[:num_prompts]
    cursor = PromptCursor(len(prompts), cfg.run.seed, cfg.data.shuffle)
    return [prompts[i] for i in cursor.take(min(num_prompts, len(prompts)))]


def evaluate(cfg: RlptConfig, run_dir: Path, num_prompts: int, checkpoint: Path | None = None,
             progress: Any = None) -> EvalResult:
    """Greedy and eval.samples sampled completions per prompt (rlpt.loops.evaluation's sampling), verified, with
    the figures training logs (`eval/*`, rlpt.eval_stats)."""
    from transformers import AutoModelForCausalLM

    from rlpt.loops.evaluation import eval_specs

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.run.seed)
    model_path = checkpoint or resolve_model_path(cfg)
    tok = load_tokenizer(cfg.model.tokenizer_path or model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, cfg.model.dtype)).eval()
    facts = inspect_model(Path(model_path), tok)
    prompts = eval_prompts(cfg, tok, run_shape(cfg, facts, tok).prompt_budget, num_prompts)
    verify = load_verifier(cfg.verifier.name)
    greedy_spec, sampled_spec = eval_specs(cfg)
    greedy: list[ScoredRollout] = []
    sampled: list[ScoredRollout] = []
    start, chunk = time.perf_counter(), cfg.rollout.prompts_per_step
    for done in range(0, len(prompts), chunk):
        batch = prompts[done:done + chunk]
        for spec, into in ((greedy_spec, greedy), (sampled_spec, sampled)):
            if spec is not None:
                into += [score_rollout(verify, ro, cfg.verifier.error_reward)
                         for ro in generate_hf(model, tok, batch, spec, 0, facts.eos_ids)]
        if progress is not None:
            shown = sampled or greedy
            progress(done + len(batch), len(prompts), sum(s.reward for s in shown) / len(shown))
    elapsed = time.perf_counter() - start
    scored = sampled or greedy
    tokens = sum(len(s.rollout.response_ids_T) for s in [*greedy, *sampled])
    figures = eval_metrics(greedy, sampled, cfg.eval.samples, cfg.eval.pass_k)
    result = EvalResult(
        run_dir=run_dir, num_prompts=len(prompts), num_samples=len(scored),
        reward_mean=sum(s.reward for s in scored) / len(scored), correct_frac=correct_frac(scored),
        error_count=sum(1 for s in [*greedy, *sampled] if s.error is not None), tokens_per_s=tokens / elapsed,
        figures=figures,
    )
    write_rollouts(run_dir, 0, scored)
    with MetricsWriter(run_dir, tensorboard=cfg.run.tensorboard) as writer:
        known = {} if result.correct_frac is None else {"eval/correct_frac": result.correct_frac}
        writer.write(0, {**figures, "eval/reward_mean": result.reward_mean, **known,
                         "eval/tokens_per_s": result.tokens_per_s, "tokens/generated": float(tokens),
                         "timing/eval": elapsed})
    return result
