"""Library-only preparation of a run (no Ray, no weights loaded): resolve the model, load the tokenizer, run the
preflight (rlpt.preflight), read and tokenize the prompts against the derived prompt budget. `rlpt check` prints
what `inspect_run` found; `rlpt train` writes it to the run directory (`prepare`) before any actor starts."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlpt.config import ConfigError, RlptConfig, save_config
from rlpt.data import load_prompts, tokenize_prompts
from rlpt.data.encode import uses_chat_template
from rlpt.models import load_tokenizer, resolve_model_path
from rlpt.preflight import (ModelFacts, PreflightError, PromptLengths, RunShape, check_engine_support, check_lengths,
                            inspect_model, round_trip, run_shape)
from rlpt.types import Prompt


@dataclass(frozen=True)
class PreparedRun:
    model_path: Path
    tokenizer: Any
    prompts: list[Prompt]
    skipped_too_long: list[str]  # uids of the prompts over the budget
    facts: ModelFacts
    shape: RunShape
    lengths: PromptLengths
    template: str  # how prompts are rendered: the chat template (and whether a system prompt is set), or plain
    warnings: tuple[str, ...] = ()  # what preflight found suspicious but not impossible
    run_dir: Path | None = None  # set by `prepare` (actor logs go under it)
    eval_prompts: tuple[Prompt, ...] = ()  # the evaluation set (eval.holdout or eval.path), tokenized


def inspect_run(cfg: RlptConfig) -> PreparedRun:
    check_async(cfg)
    check_reward(cfg)
    check_environment(cfg)
    model_path = resolve_model_path(cfg)
    check_lengths(cfg, model_path)
    tok = load_tokenizer(cfg.model.tokenizer_path or model_path)
    check_observation_format(cfg, tok)
    facts = inspect_model(model_path, tok)
    check_engine_support(facts.architecture, cfg.rollout.engine)
    budget = run_shape(cfg, facts, tok).prompt_budget
    loaded = load_prompts(cfg.data, cfg.run.seed)
    tokenized = tokenize_prompts(loaded, tok, cfg.data, budget)
    lengths = PromptLengths.of(tokenized.lengths, budget)
    if not tokenized.prompts:
        raise PreflightError(f"all {len(loaded)} prompts are longer than the prompt budget of {budget} tokens "
                             f"(data.max_prompt_tokens={cfg.data.max_prompt_tokens}, rollout.max_new_tokens="
                             f"{cfg.rollout.max_new_tokens}, model context {facts.context_len}); the shortest has "
                             f"{lengths.min} tokens")
    train_prompts, eval_prompts = evaluation_set(cfg, tokenized.prompts, tok, budget)
    shape = run_shape(cfg, facts, tok, tokenized.prompts[0].prompt_ids)
    chat = uses_chat_template(tok, cfg.data.chat_template)
    template = ("the tokenizer's chat template" + (", with data.system_prompt" if cfg.data.system_prompt else "")
                if chat else "plain text" + (" (the tokenizer has no template)" if not facts.chat_template
                                             else " (data.chat_template=never)"))
    first = tokenized.prompts[0].text
    back = round_trip(tok, first)
    warnings = () if back is None else (
        f"the tokenizer does not give text back: {first[:60]!r} -> ids -> {back[:60]!r}; verifiers would see "
        f"completions that way (a WordLevel tokenizer needs a decoder, e.g. tokenizers.decoders.Fuse())",)
    return PreparedRun(model_path, tok, train_prompts, tokenized.skipped_too_long, facts, shape, lengths,
                       template, warnings, eval_prompts=eval_prompts)


def check_async(cfg: RlptConfig) -> None:
    """rollout.max_staleness >= 1 needs the online loop (the round loops have no producer to overlap)."""
    if not cfg.rollout.max_staleness:
        return  # (and no torch import: a preflight that fails stays fast)
    from rlpt.algorithms import algorithm_of
    from rlpt.algorithms.base import LoopKind

    if algorithm_of(cfg).loop(cfg) is not LoopKind.ONLINE:
        raise ConfigError(f"rollout.max_staleness={cfg.rollout.max_staleness}: asynchronous training runs in the "
                          f"online loop; algorithm {cfg.algorithm.name!r} here trains in rounds (set "
                          f"rollout.max_staleness: 0)")


def check_reward(cfg: RlptConfig) -> None:
    """Model and judge terms name a model directory; an algorithm that trains on verdicts (NFT, RFT, DPO) takes
    only rule terms (model and judge scores would not change what it trains on)."""
    for i, t in enumerate(cfg.reward.terms):
        path = getattr(t, "path", None)
        if path is not None and not (Path(path) / "config.json").is_file():
            raise ConfigError(f"reward.terms[{i}] ({t.name}).path: {path} is not an HF model directory (no "
                              f"config.json); `rlpt rm train` writes one for a reward model")
    if not cfg.reward.terms:
        return
    from rlpt.algorithms import algorithm_of

    if not algorithm_of(cfg).needs_correct:
        return
    models = [t.name for t in cfg.reward.terms if t not in cfg.reward.rules]
    if models:  # (with only rule terms, the first gives the verdicts)
        raise ConfigError(f"algorithm {cfg.algorithm.name!r} trains on correct / incorrect samples (the first rule "
                          f"term's verdict), not on reward values: the model/judge terms {models} would not change "
                          f"what it trains on; use a GRPO-family algorithm (grpo, gspo, rloo) to train on their "
                          f"scores")


def check_environment(cfg: RlptConfig) -> None:
    """Multi-turn runs: the environment loads (with its args) here, before any actor starts; and they run in the
    online loops (the round loops of RFT and DPO sample single completions)."""
    e = cfg.environment
    if e.name is None:
        return
    from rlpt.algorithms import algorithm_of
    from rlpt.algorithms.base import LoopKind
    from rlpt.environments import EnvironmentLoadError
    from rlpt.environments.replay import EnvStepper

    if algorithm_of(cfg).loop(cfg) is not LoopKind.ONLINE:
        raise ConfigError(f"environment.name={e.name!r}: multi-turn rollouts run in the online loop; algorithm "
                          f"{cfg.algorithm.name!r} here trains in rounds (use grpo, gspo, rloo, nft, or rft with "
                          f"algorithm.rft.mode: online)")
    if cfg.rollout.partial_tokens:
        raise ConfigError("rollout.partial_tokens with an environment: multi-turn rollouts already take new weights "
                          "between turns (each turn stamped with its version); set rollout.partial_tokens: 0")
    if cfg.reward.terms and e.reward == "environment":
        raise ConfigError(f"reward.terms {[t.name for t in cfg.reward.terms]} would never score: "
                          f"environment.reward is 'environment' (the last step's reward); set environment.reward: "
                          f"terms to score the final model turn with them")
    try:
        EnvStepper(e.name, e.args)
    except EnvironmentLoadError:
        raise  # its message already names the spec and what failed
    except TypeError as err:  # the constructor refused the args
        raise ConfigError(f"environment.args {e.args} for {e.name!r}: {err}") from err
    except Exception as err:  # noqa: BLE001 - whatever the user's constructor raises, said before any actor starts
        raise ConfigError(f"environment {e.name!r} with args {e.args}: {type(err).__name__}: {err}") from err


def check_observation_format(cfg: RlptConfig, tok: Any) -> None:
    """A chat template that rewrites earlier turns, or refuses the observation role, fails here, not at the first
    observation of the run."""
    if not cfg.environment.enabled:
        return
    from rlpt.trajectory import Observations

    try:
        Observations(tok, cfg.environment.observation_role).ids("observation", None)
    except Exception as err:  # noqa: BLE001 - a jinja TemplateError, our append-only check, ...
        raise ConfigError(f"environment.observation_role={cfg.environment.observation_role!r}: the tokenizer's chat "
                          f"template cannot take an observation turn: {type(err).__name__}: {err}") from err


HOLDOUT_STREAM = 0xE7A1  # the held-out draw's own seed stream (not the training data order's)


def evaluation_set(cfg: RlptConfig, prompts: list[Prompt], tok: Any, budget: int
                   ) -> tuple[list[Prompt], tuple[Prompt, ...]]:
    """(training prompts, evaluation prompts). eval.holdout draws its prompts with run.seed and removes them from
    training (order kept); eval.path reads its own file with the data settings. eval.num_prompts caps the set."""
    e = cfg.eval
    if cfg.run.eval_every:
        from rlpt.algorithms import algorithm_of
        from rlpt.algorithms.base import LoopKind

        if algorithm_of(cfg).loop(cfg) is not LoopKind.ONLINE:
            raise ConfigError(f"run.eval_every: evaluation during training runs in the online loops; "
                              f"algorithm {cfg.algorithm.name!r} here trains in rounds (evaluate its checkpoints "
                              f"with `rlpt eval --checkpoint DIR`)")
    if e.holdout:
        if e.holdout >= len(prompts):
            raise PreflightError(f"eval.holdout={e.holdout} leaves no training prompt ({len(prompts)} prompts fit "
                                 f"the budget)")
        import numpy as np

        draw = np.random.default_rng([cfg.run.seed, HOLDOUT_STREAM]).permutation(len(prompts))
        held = {int(i) for i in draw[:e.holdout]}
        train = [p for i, p in enumerate(prompts) if i not in held]
        evals = tuple(p for i, p in enumerate(prompts) if i in held)
    elif e.path is not None:
        source = cfg.data.model_copy(update={"path": e.path, "task": None})  # a derived copy: cfg stays as loaded
        evals = tuple(tokenize_prompts(load_prompts(source, cfg.run.seed), tok, source, budget).prompts)
        if not evals:
            raise PreflightError(f"eval.path {e.path}: no prompt fits the prompt budget of {budget} tokens")
        train = prompts
    else:
        return prompts, ()
    return train, evals[:e.num_prompts] if e.num_prompts else evals


def event(text: str) -> None:
    """A one-line rlpt event on the console (stderr, above the progress bar)."""
    print(f"[rlpt] {text}", file=sys.stderr, flush=True)


def prepare(cfg: RlptConfig, run_dir: Path) -> PreparedRun:
    """`inspect_run`, then the run directory: the resolved config and the data report; one event line says what
    the preflight found and how long it took."""
    start = time.perf_counter()
    prep = replace(inspect_run(cfg), run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    skipped = len(prep.skipped_too_long)
    held_out = len(prep.eval_prompts) if cfg.eval.holdout else 0  # taken from the data for evaluation
    report = {"prompts": len(prep.prompts) + skipped + held_out, "kept": len(prep.prompts), "skipped_too_long": skipped,
              "max_prompt_tokens": cfg.data.max_prompt_tokens, "prompt_budget": prep.shape.prompt_budget,
              "context_len": prep.facts.context_len, "eos_ids": list(prep.facts.eos_ids),
              "skipped_uids": prep.skipped_too_long[:100], "eval_prompts": len(prep.eval_prompts)}
    (run_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    for w in prep.warnings:
        print(f"[rlpt] warning: {w}", file=sys.stderr)
    if skipped:
        print(f"[rlpt] skipped {skipped} of {report['prompts']} prompts longer than the prompt budget of "
              f"{prep.shape.prompt_budget} tokens (data.max_prompt_tokens={cfg.data.max_prompt_tokens}; see "
              f"{run_dir / 'data_report.json'})", file=sys.stderr)
    f = prep.facts
    event(f"preflight {time.perf_counter() - start:.1f}s: {f.architecture}, context {f.context_len}, prompt budget "
          f"{prep.shape.prompt_budget}, EOS {list(f.eos_ids)}, {len(prep.prompts)} prompts"
          + (f", {len(prep.eval_prompts)} evaluation prompts" if prep.eval_prompts else ""))
    return prep


__all__ = ["PreparedRun", "event", "inspect_run", "prepare"]
