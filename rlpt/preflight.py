"""Preflight: read the model's config, generation config and tokenizer and check them against the run, in seconds
and before any actor starts. A setup that cannot work is a `PreflightError` naming the config keys and the numbers
(the CLI prints it without a traceback, exit 2); what can be derived is derived here, once:

- the context: the smallest length key of config.json (vLLM's order), times the RoPE factor for scaling types
  that do not already count it (`linear`, `dynamic`; not `llama3`, `yarn`, `longrope`, `su`), capped by the
  tokenizer's `model_max_length`. The engine's `max_model_len` is prompt budget + `rollout.max_new_tokens`, never
  more than the context; `data.max_prompt_tokens: null` (the default) means "what the context leaves";
- EOS: every id the model declares (generation_config.json may list several, as Llama 3 does; config.json; the
  tokenizer's) stops generation in the engine and is cut from the decoded completion the verifier sees; the loss
  mask covers the whole sampled response, EOS included, whichever EOS it was;
- pad: a tokenizer without one pads with EOS (padding is masked everywhere, documented in the README);
- the tokenizer's vocabulary must fit the model's embedding; the architecture must be a causal LM transformers
  knows (the engine's own support is checked by the rollout actor, actors/rollout.py);
- the sync probe is built to fit the context, from tokens the tokenizer really has (no `<unk>`).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rlpt.config import RlptConfig
from rlpt.errors import SetupError

# vLLM derives the context from the smallest of these config.json keys (vllm/transformers_utils, 0.32).
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
               "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
# RoPE scaling types whose max_position_embeddings already includes the extension (vLLM does not multiply).
ROPE_ALREADY_SCALED = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
PROBE_TEXT = " 12 34 the answer"
PROBE_MAX_TOKENS = 64


class PreflightError(SetupError):
    """The model, tokenizer and config cannot make a run; the message names the keys and the numbers."""


@dataclass(frozen=True)
class ModelFacts:
    """What preflight read from a model directory and its tokenizer."""

    path: str
    architecture: str
    model_type: str
    context_len: int
    context_source: str  # e.g. "max_position_embeddings=64", "... x rope factor 4 (linear)", "model_max_length"
    vocab_size: int  # rows of the model's embedding
    tokenizer_size: int  # len(tokenizer)
    eos_ids: tuple[int, ...]
    pad_id: int
    pad_is_eos: bool
    chat_template: bool


def round_trip(tokenizer: Any, text: str) -> str | None:
    """None when decode(encode(text)) gives the text back (what the verifier will see of a completion), else the
    text it gives: a tokenizer that does not round-trip (a WordLevel tokenizer without a decoder joins tokens with
    spaces) makes verifiers see other text than the model wrote."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    back = tokenizer.decode(ids, skip_special_tokens=True)
    return None if back.strip() == text.strip() else back


@dataclass(frozen=True)
class RunShape:
    """The run's derived lengths: prompt budget, engine max_model_len, and the sync probe."""

    prompt_budget: int
    max_model_len: int
    probe_ids: tuple[int, ...]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise PreflightError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def context_length(config: dict[str, Any], tokenizer_config: dict[str, Any]) -> tuple[int, str]:
    """The model's usable context and where it came from (see the module docstring).

    >>> context_length({"max_position_embeddings": 64}, {})
    (64, 'max_position_embeddings=64')
    >>> context_length({"max_position_embeddings": 1024, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    ...                {"model_max_length": 100000})
    (2048, 'max_position_embeddings=1024 x rope factor 2.0 (linear)')
    >>> context_length({"max_position_embeddings": 8192, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
    ...                {"model_max_length": 4096})
    (4096, 'tokenizer model_max_length=4096')
    """
    cfg = config.get("text_config") or config
    found = [(int(cfg[k]), k) for k in LENGTH_KEYS if isinstance(cfg.get(k), (int, float))]
    if not found:
        raise PreflightError("the model's config.json has none of " + ", ".join(LENGTH_KEYS) +
                             ": its context length is unknown")
    length, key = min(found)
    source = f"{key}={length}"
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_type = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
    factor = rope.get("factor") if isinstance(rope, dict) else None
    if rope_type not in (None, "default", *ROPE_ALREADY_SCALED) and factor and "gemma3" not in str(
            config.get("model_type")):
        length = int(length * float(factor))
        source += f" x rope factor {factor} ({rope_type})"
    tok_max = tokenizer_config.get("model_max_length")
    if isinstance(tok_max, (int, float)) and tok_max < length:
        length, source = int(tok_max), f"tokenizer model_max_length={int(tok_max)}"
    return length, source


def eos_ids(config: dict[str, Any], generation_config: dict[str, Any], tokenizer: Any) -> tuple[int, ...]:
    """Every EOS id the model declares, the tokenizer's first.

    >>> class Tok: eos_token_id = 2
    >>> eos_ids({"eos_token_id": 2}, {"eos_token_id": [2, 7, 9]}, Tok())
    (2, 7, 9)
    """
    ids = _ids(getattr(tokenizer, "eos_token_id", None)) + _ids(generation_config.get("eos_token_id")) + _ids(
        (config.get("text_config") or config).get("eos_token_id"))
    return tuple(dict.fromkeys(ids))


def inspect_model(model_dir: Path, tokenizer: Any) -> ModelFacts:
    """Read config.json, generation_config.json and tokenizer_config.json of `model_dir` (no weights loaded)."""
    config = _read_json(model_dir / "config.json")
    if not config:
        raise PreflightError(f"model.path={str(model_dir)!r}: no config.json there")
    arch = (config.get("architectures") or ["?"])[0]
    model_type = str(config.get("model_type", "?"))
    causal = causal_lm_names().get(model_type)
    known = causal if isinstance(causal, (list, tuple)) else (causal,)
    if causal is None or (config.get("architectures") and arch not in known):
        raise PreflightError(f"model.path={str(model_dir)!r}: architecture {arch} (model_type {model_type!r}) is not "
                             f"a causal language model transformers {_transformers_version()} knows (expected "
                             f"{' or '.join(map(str, known)) if causal else 'a *ForCausalLM'}); rlpt trains causal LMs")
    context, source = context_length(config, _read_json(model_dir / "tokenizer_config.json"))
    text_cfg = config.get("text_config") or config
    vocab = int(text_cfg.get("vocab_size") or 0)
    eos = eos_ids(config, _read_json(model_dir / "generation_config.json"), tokenizer)
    if not eos:
        raise PreflightError(f"model.path={str(model_dir)!r}: neither the tokenizer nor the model declares an EOS "
                             f"token (set eos_token in tokenizer_config.json or eos_token_id in config.json)")
    size = len(tokenizer)
    if vocab and size > vocab:
        raise PreflightError(f"the tokenizer has {size} tokens but the model's embedding has vocab_size={vocab} rows "
                             f"(model.path / model.tokenizer_path do not belong together)")
    if vocab and max(eos) >= vocab:
        raise PreflightError(f"EOS id {max(eos)} is outside the model's vocab_size={vocab}")
    pad = getattr(tokenizer, "pad_token_id", None)
    return ModelFacts(path=str(model_dir), architecture=arch, model_type=model_type, context_len=context,
                      context_source=source, vocab_size=vocab or size, tokenizer_size=size, eos_ids=eos,
                      pad_id=eos[0] if pad is None else int(pad), pad_is_eos=pad is None or int(pad) in eos,
                      chat_template=bool(getattr(tokenizer, "chat_template", None)))


def causal_lm_names() -> dict[str, Any]:
    """transformers' `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` (model_type -> class name(s)), read as a literal from the
    installed modeling_auto.py: importing that module imports torch and transformers' generation stack (~1.5 s of
    the preflight, which otherwise needs neither). Falls back to the import if the source no longer has that shape
    (a test checks the two agree)."""
    import ast
    import importlib.util

    # The path from the top package: find_spec of the submodule would import transformers.models (~0.25 s).
    spec = importlib.util.find_spec("transformers")
    origin = None if spec is None or spec.origin is None else Path(spec.origin).parent / "models/auto/modeling_auto.py"
    try:
        tree = ast.parse(origin.read_text(encoding="utf-8")) if origin else ast.Module(body=[], type_ignores=[])
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and getattr(node.targets[0], "id", None) == "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
                    and isinstance(node.value, ast.Call) and len(node.value.args) == 1):
                return dict(ast.literal_eval(node.value.args[0]))
    except (OSError, SyntaxError, ValueError, TypeError):
        pass
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def engine_architectures() -> frozenset[str] | None:
    """The causal-LM architectures this vLLM build serves (its registry's `_TEXT_GENERATION_MODELS`), read from the
    registry's source without importing vLLM (that import costs ~10 s on 2 cores); None when it cannot be read
    (another vLLM layout: the engine's own error then stands)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model_executor" / "models" / "registry.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "_TEXT_GENERATION_MODELS" for t in node.targets)):
            return frozenset(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return None


def check_engine_support(architecture: str, engine: str = "vllm") -> None:
    """A clear error, before any actor starts, for a model this vLLM build cannot run. The hf engine has no registry
    to read: it runs transformers' own model class (tested on Llama, Qwen2 and Mistral families; recurrent and
    linear-attention hybrids are untested there)."""
    if engine != "vllm":
        return
    archs = engine_architectures()
    if archs is not None and architecture not in archs:
        raise PreflightError(f"the rollout engine (vLLM) has no implementation of {architecture}; it runs "
                             f"{len(archs)} causal-LM architectures (e.g. LlamaForCausalLM, Qwen2ForCausalLM, "
                             f"Qwen3ForCausalLM, MistralForCausalLM, GemmaForCausalLM, Phi3ForCausalLM)")


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def prompt_budget(cfg: RlptConfig, context: int, source: str) -> int:
    """The prompt budget this config leaves in a context of `context` tokens; an error naming the keys and the
    numbers when they cannot fit."""
    new = cfg.rollout.max_new_tokens
    if new >= context:
        raise PreflightError(f"rollout.max_new_tokens={new} leaves no room for a prompt in the model's context of "
                             f"{context} tokens ({source})")
    budget = cfg.data.max_prompt_tokens if cfg.data.max_prompt_tokens is not None else context - new
    if budget + new > context:
        raise PreflightError(f"data.max_prompt_tokens={budget} + rollout.max_new_tokens={new} = {budget + new} "
                             f"exceeds the model's context of {context} tokens ({source}): lower "
                             f"data.max_prompt_tokens to at most {context - new} (or leave it unset: null = what "
                             f"the context leaves)")
    return budget


def check_lengths(cfg: RlptConfig, model_dir: Path) -> int:
    """The length check from the JSON files alone, before the tokenizer (transformers) is even imported: a run that
    cannot fit fails in about a second. Returns the prompt budget."""
    config = _read_json(model_dir / "config.json")
    if not config:
        raise PreflightError(f"model.path={str(model_dir)!r}: no config.json there")
    return prompt_budget(cfg, *context_length(config, _read_json(model_dir / "tokenizer_config.json")))


def run_shape(cfg: RlptConfig, facts: ModelFacts, tokenizer: Any, first_prompt_ids: Sequence[int] = ()) -> RunShape:
    """Prompt budget and engine length for this config and model; an error naming the keys when they cannot fit."""
    new, context = cfg.rollout.max_new_tokens, facts.context_len
    budget = prompt_budget(cfg, context, facts.context_source)
    return RunShape(prompt_budget=budget, max_model_len=min(context, budget + new + 1),
                    probe_ids=probe_ids(tokenizer, first_prompt_ids, min(context, budget + new)))


def probe_ids(tokenizer: Any, prompt_ids: Sequence[int], limit: int) -> tuple[int, ...]:
    """The sync probe: a prompt followed by a few answer-like tokens the tokenizer really has (no unknown token),
    at most `limit` (the context) and PROBE_MAX_TOKENS long, at least 2 tokens."""
    unk = getattr(tokenizer, "unk_token_id", None)
    tail = [t for t in tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"] if t != unk]
    cap = max(2, min(limit, PROBE_MAX_TOKENS))
    tail = tail[: cap // 2]
    head = list(prompt_ids)[: cap - len(tail)]
    ids = head + tail
    if len(ids) < 2:  # a prompt of one token and a tokenizer that knows none of the probe's text
        ids = (ids + list(_ids(getattr(tokenizer, "eos_token_id", None))) * 2)[:2]
    return tuple(ids)


@dataclass(frozen=True)
class PromptLengths:
    count: int
    min: int
    median: float
    p90: int
    max: int
    over_budget: int  # prompts that would be skipped (or fail, with data.on_too_long: error)

    @staticmethod
    def of(lengths: Sequence[int], budget: int) -> "PromptLengths":
        s = sorted(lengths)
        if not s:
            return PromptLengths(0, 0, 0.0, 0, 0, 0)
        return PromptLengths(len(s), s[0], float(statistics.median(s)), s[min(len(s) - 1, int(0.9 * len(s)))],
                             s[-1], sum(1 for n in s if n > budget))


def report(facts: ModelFacts, shape: RunShape, lengths: PromptLengths, cfg: RlptConfig, template: str,
           warnings: Sequence[str] = ()) -> str:
    """What `rlpt check` prints."""
    return "\n".join([
        f"model        {facts.path}",
        f"             {facts.architecture} ({facts.model_type}), vocab {facts.vocab_size}, tokenizer "
        f"{facts.tokenizer_size} tokens",
        f"context      {facts.context_len} tokens ({facts.context_source})",
        f"lengths      prompt budget {shape.prompt_budget} (data.max_prompt_tokens="
        f"{'null' if cfg.data.max_prompt_tokens is None else cfg.data.max_prompt_tokens}) + rollout.max_new_tokens={cfg.rollout.max_new_tokens}; engine max_model_len "
        f"{shape.max_model_len}",
        f"EOS ids      {list(facts.eos_ids)} (generation stops on each; cut from completions)",
        f"pad id       {facts.pad_id}{' (= EOS: the tokenizer has no pad token)' if facts.pad_is_eos else ''}",
        f"chat         {template}",
        f"prompts      {lengths.count}: tokens min {lengths.min}, median {lengths.median:g}, p90 {lengths.p90}, "
        f"max {lengths.max}; {lengths.over_budget} over the budget "
        f"({'skipped' if cfg.data.on_too_long == 'skip' else 'an error: data.on_too_long=error'})",
        f"sync probe   {len(shape.probe_ids)} tokens",
        *(f"warning      {w}" for w in warnings),
    ])
