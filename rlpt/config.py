"""The one configuration schema of rlpt: strict pydantic models, loaded from one YAML file plus dotted overrides.

- Strict: an unknown key is an error naming the key, its path and the allowed keys; a wrong type names the key,
  what was expected and what was given. No silent coercion (`"1"` is not an int, `"true"` is not a bool).
- Frozen: nothing writes to a config after `load_config` returns (tuples, not lists, for sequences).
- YAML quirk fixed: PyYAML reads `1e-3` as a string (YAML 1.1 wants `1.0e-3`); our loader reads it as a float.

Values live in `configs/*.yaml`; the schema (and its defaults) lives here. The defaults ARE the built-in run
(`rlpt train` with no CONFIG): GRPO on the synthetic `arith` task with the built-in random-init tiny model, tuned so
it learns from reward alone in ~2 minutes on 2 CPU cores (e.g. lr 2e-3, 3 new tokens, KL 0.05 to the initial
policy to keep exploring). Real models need a recipe from configs/ (lr ~1e-6, longer responses, ...).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlpt.errors import SetupError

StrTuple = Annotated[tuple[str, ...], Field(strict=False)]  # YAML gives lists; we store tuples (immutable)
IntTuple = Annotated[tuple[int, ...], Field(strict=False)]


class ConfigError(SetupError):
    """A config problem, with every offending key path in the message."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ----------------------------------------------------------------------------------------------------- model
class LoraConfig(_Section):
    enabled: bool = Field(False, description="train LoRA adapters instead of the full model (the engines get merged "
                                             "weights)")
    r: int = Field(8, gt=0, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: StrTuple = Field(("q_proj", "v_proj"), description=(
        "module names that get adapters (peft `target_modules`)"))


class ModelConfig(_Section):
    path: str | None = Field(None, description="HF model directory; None = the built-in tiny model (built on demand)")
    tokenizer_path: str | None = Field(None, description="defaults to `path`")
    tiny_arch: Literal["llama", "qwen2"] = Field("llama", description=(
        "architecture of the built-in tiny model (with path: null)"))
    tiny_size: Literal["tiny", "small"] = Field("tiny", description="built-in tiny model size: tiny (~0.12M params) "
                                                                    "or small (~3.7M params)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=(
        "dtype of the learner's weights and of the engines"))
    lora: LoraConfig = LoraConfig()


# ------------------------------------------------------------------------------------------------------ data
class ArithConfig(_Section):
    num_prompts: int = Field(512, gt=0, description="prompts generated for the arith task")
    max_operand: int = Field(4, ge=1, description="operands are drawn from 0..max_operand")
    num_operands: int = Field(2, ge=2, description="operands per expression")
    ops: StrTuple = Field(("+",), description="operators drawn from: +, -, *")

    @model_validator(mode="after")
    def _ops_known(self) -> "ArithConfig":
        bad = [op for op in self.ops if op not in ("+", "-", "*")]
        if bad or not self.ops:
            raise ValueError(f"ops must be a non-empty subset of ['+', '-', '*'], got {list(self.ops)}")
        return self


class CountdownConfig(_Section):
    num_prompts: int = Field(512, gt=0, description="prompts generated for the countdown task")
    num_numbers: int = Field(3, ge=2, le=6, description="numbers given per puzzle")
    max_number: int = Field(10, ge=2, description="largest number given")
    max_target: int = Field(100, ge=1, description="largest target value")


class ColumnMap(_Section):
    """Which columns hold what. Nested fields are dotted paths (`question.text` inside a struct / JSON object)."""

    prompt: str = Field("prompt", description="a string, or a chat: a list of {role, content} messages (the HF "
                                              "`messages` / conversational `prompt` shape), system turn optional")
    answer: str | None = Field("answer", description="column with the ground truth the verifier compares against "
                                                     "(null: none)")
    meta: StrTuple = Field((), description="extra columns passed to the verifier as prompt metadata (e.g. test cases)")
    id: str | None = Field(None, description="column with a stable row id; default: file name + row number")


class AnswerConfig(_Section):
    """How the ground truth is read from the answer column: as it is, the last `\\boxed{...}` of a full solution
    (MATH), or group 1 of a regex (GSM8K: `'####\\s*(.+)$'`)."""

    extract: Literal["as_is", "boxed", "regex"] = Field("as_is", description=(
        "as_is: the column's value; boxed: the last \\boxed{...}; regex: group 1 of data.answer.regex"))
    regex: str | None = Field(None, description="with extract: regex, a Python regex whose group 1 is the answer")

    @model_validator(mode="after")
    def _regex_given(self) -> "AnswerConfig":
        if (self.extract == "regex") != (self.regex is not None):
            raise ValueError("data.answer.regex is needed with (and only with) data.answer.extract: regex")
        if self.regex is not None:
            try:
                if re.compile(self.regex).groups < 1:
                    raise ValueError(f"data.answer.regex {self.regex!r} has no group: wrap the answer in ( )")
            except re.error as e:
                raise ValueError(f"data.answer.regex {self.regex!r} is not a valid regex: {e}") from None
        return self


class DataConfig(_Section):
    task: Literal["arith", "countdown"] | None = Field("arith", description="built-in synthetic task")
    path: str | None = Field(None, description="a .parquet or .jsonl prompt file (set task: null)")
    columns: ColumnMap = ColumnMap()
    answer: AnswerConfig = AnswerConfig()
    arith: ArithConfig = ArithConfig()
    countdown: CountdownConfig = CountdownConfig()
    chat_template: Literal["auto", "never", "always"] = Field("auto", description=(
        "auto: use the tokenizer's chat template when it has one; never: plain text; always: fail if it has none"))
    system_prompt: str | None = Field(None, description="system turn added to prompts that have none (chat template "
                                                        "only)")
    max_prompt_tokens: int | None = Field(None, gt=0, description="longest prompt in tokens; null = what the "
                                                                   "model's context leaves after "
                                                                   "rollout.max_new_tokens")
    on_too_long: Literal["skip", "error"] = Field("skip", description=(
        "a prompt longer than the prompt budget: skip it (preflight counts them) or fail the run"))
    shuffle: bool = Field(True, description="shuffle the prompts each epoch (seeded by run.seed)")

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if (self.task is None) == (self.path is None):
            raise ValueError("set exactly one of data.task (built-in synthetic task) or data.path (a prompt file)")
        return self


# --------------------------------------------------------------------------------------------------- rollout
class RolloutConfig(_Section):
    engine: Literal["vllm", "hf"] = Field("vllm", description=(
        "vllm: vLLM (paged KV cache, continuous batching, tensor parallelism: the engine for real models); hf: "
        "rlpt's own KV-cached decoding of the transformers model, which has almost no fixed cost per call and starts "
        "in about a second: faster for small models and short completions, where vLLM's fixed costs are most of a "
        "step (one device per engine, no tensor parallelism)"))
    num_workers: int = Field(1, ge=1, description="rollout engines at the start of the run")
    prompts_per_step: int = Field(16, ge=1, description="prompts per training step (each sampled samples_per_prompt "
                                                        "times)")
    samples_per_prompt: int = Field(16, ge=1, description="G, the group size")
    max_new_tokens: int = Field(3, ge=1, description="longest completion in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold (1 = off)")
    top_k: int = Field(-1, description="-1 = off")
    stop: StrTuple = Field((), description="strings that end a completion")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (vLLM tensor parallelism)")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description=(
        "share of an engine's GPU memory vLLM may take (weights + KV cache)"))
    cpu_kv_cache_gib: int = Field(1, ge=1, description="KV cache of a CPU engine in GiB (an exported "
                                                       "VLLM_CPU_KVCACHE_SPACE wins)")
    max_restarts: int = Field(3, ge=0, description="dead rollout engines replaced per run before giving up")
    max_staleness: int = Field(0, ge=0, description=(
        "K: 0 = the synchronous loop; K >= 1 = asynchronous: engines generate for later steps while the learner "
        "trains, and a sample from policy version v is trained on at learner version u only if u - v <= K"))
    stale: Literal["wait", "drop"] = Field("wait", description=(
        "with max_staleness >= 1: wait = generation for step s starts only once the learner holds version s - K "
        "(no sample can pass the bound; deterministic, resumes exactly); drop = generation never waits for the "
        "learner, and groups past the bound when their step is trained are dropped and regenerated"))
    partial_tokens: int = Field(0, ge=0, description=(
        "with max_staleness >= 1: generate in segments of this many tokens, the engines taking new weights between "
        "segments (each token stamped with the version that sampled it; the bound counts the oldest; continuation "
        "from the exact token ids); 0 = whole completions. Stop strings are matched within a segment"))

    @model_validator(mode="after")
    def _engine_fits(self) -> "RolloutConfig":
        if self.engine == "hf" and self.tensor_parallel_size > 1:
            raise ValueError(f"rollout.engine=hf runs each engine on one device: rollout.tensor_parallel_size must be "
                             f"1 (got {self.tensor_parallel_size}); use rollout.engine=vllm for tensor parallelism")
        return self


# -------------------------------------------------------------------------------------------------- verifier
class VerifierConfig(_Section):
    name: str = Field("numeric", description="built-in (math, numeric, exact, countdown, code) or plug-in 'pkg.mod:fn'")
    num_workers: int = Field(1, ge=1, description="verifier actors (each scores in an isolated child process)")
    timeout_s: float = Field(10.0, gt=0, description="longest a verifier may take on one sample; past it the sample "
                                                     "scores error_reward")
    error_reward: float = Field(0.0, description="reward given to a rollout whose verifier raised or timed out")
    max_restarts: int = Field(3, ge=0, description="dead verifier actors replaced per run before giving up")


# ---------------------------------------------------------------------------------------------------- reward
# reward/<name> metrics rlpt already writes, and the info keys rlpt.rewards.compose_one adds beside the terms
RESERVED_TERM_NAMES = ("mean", "std", "correct_frac", "errors", "verdict_error")


class _Term(_Section):
    """What every reward term has: a name (its metric is reward/<name>, its value a key of the rollouts file's
    reward_terms), a weight in the sum, and an optional gate."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]{0,31}$", description="term name: reward/<name> in metrics")
    weight: float = Field(1.0, description="weight of the term in the reward (reward = sum of weight * value)")
    gate: str | None = Field(None, description="name of a rule term: this term counts only for rollouts that term "
                                               "says are correct (0 otherwise)")
    num_workers: int = Field(1, ge=1, description="actors in this term's pool")
    timeout_s: float = Field(60.0, gt=0, description="longest one call may take (a rule term: one sample; a model or "
                                                     "judge term: one batch); past it the rows are timeout errors")
    error_reward: float = Field(0.0, description="the term's value for a rollout it failed to score (an error row)")
    max_restarts: int = Field(3, ge=0, description="dead actors of this pool replaced per run before giving up")
    max_workers: int | None = Field(None, ge=1, description=(
        "scale the pool between num_workers and this many actors from the share of each step it spends scoring "
        "(above target_busy_share + 0.1: one more actor; below target_busy_share - 0.1: one fewer; at most one "
        "change per 3 steps); None = a fixed pool of num_workers"))
    target_busy_share: float = Field(0.3, gt=0, lt=1, description="with max_workers: the wanted share of step "
                                                                  "time this pool spends scoring")

    @model_validator(mode="after")
    def _scaling_bounds(self) -> "_Term":
        if self.max_workers is not None and self.max_workers < self.num_workers:
            raise ValueError(f"reward.terms.{self.name}: max_workers {self.max_workers} < num_workers "
                             f"{self.num_workers}")
        return self


class RuleTerm(_Term):
    """A rule verifier (as the `verifier` section's), in its own verifier pool; the only kind that says correct."""

    kind: Literal["rule"] = Field("rule", description="rule: a verifier function")
    verifier: str = Field("numeric", description="built-in verifier (math, numeric, exact, countdown, code) or "
                                                 "plug-in 'pkg.mod:fn'")
    timeout_s: float = Field(10.0, gt=0, description="longest the verifier may take on one sample")


class _ModelTerm(_Term):
    path: str = Field(..., description="local HF model directory")
    batch_size: int = Field(32, ge=1, description="rollouts per forward pass")
    num_cpus: float = Field(1.0, gt=0, description="CPUs each actor of the pool reserves")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each actor of the pool reserves")
    resources: dict[str, float] = Field(default_factory=dict, description=(
        "extra Ray resources per actor, e.g. {rlpt_reward: 1} for the reward node type of a cluster/ file"))


class ModelTerm(_ModelTerm):
    """A discriminative reward model: AutoModelForSequenceClassification with one label; the value is its logit
    on the prompt + completion, rendered through the model's chat template when it has one."""

    kind: Literal["model"] = Field("model", description="model: a sequence-classification reward model")
    max_len: int = Field(2048, ge=8, description="longest prompt + completion in tokens; longer ones are error rows")


class JudgeTerm(_ModelTerm):
    """A generative judge: a causal LM served by its own vLLM engine (never synced), asked `template` and read by
    `parser`: regex (the first group of `pattern` as a float) or yes_no (p(yes) / (p(yes) + p(no)) of the first
    answer token)."""

    kind: Literal["judge"] = Field("judge", description="judge: a generative LLM judge")
    template: str = Field(..., description="the judge's prompt, with {prompt}, {completion} and {answer} fields")
    parser: Literal["regex", "yes_no"] = Field("yes_no", description="how the judge's output becomes a value")
    pattern: str = Field(r"(-?[0-9]+(?:\.[0-9]+)?)", description="regex parser: the first group is the value")
    yes: str = Field("yes", description="yes_no parser: the token that means yes")
    no: str = Field("no", description="yes_no parser: the token that means no")
    max_new_tokens: int = Field(16, ge=1, description="judge output length (yes_no reads the first token only)")
    chat_template: bool = Field(True, description="wrap the rendered prompt in the judge's chat template (if any)")
    max_model_len: int = Field(2048, ge=16, description="the judge engine's context length")

    @model_validator(mode="after")
    def _template_fields(self) -> "JudgeTerm":
        import string

        fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        bad = fields - {"prompt", "completion", "answer"}
        if bad or "completion" not in fields:
            raise ValueError(f"judge template must contain {{completion}} and only {{prompt}}, {{completion}}, "
                             f"{{answer}} fields (write {{{{ and }}}} for braces), got {sorted(fields)}")
        if self.parser == "regex":
            try:
                if re.compile(self.pattern).groups < 1:
                    raise ValueError(f"judge pattern {self.pattern!r} needs a group: the value")
            except re.error as e:
                raise ValueError(f"judge pattern {self.pattern!r} is not a regex: {e}") from e
        return self


RewardTerm = Annotated[RuleTerm | ModelTerm | JudgeTerm, Field(discriminator="kind")]


class RewardConfig(_Section):
    """Composed rewards. Empty `terms` (the default): the reward is the `verifier` section's, exactly as before.
    Otherwise reward = sum of weight * value over the terms (a gated term counts only where its gate term says
    correct); `verifier` then only measures evaluation accuracy (and gives it during training as eval metrics)."""

    terms: Annotated[tuple[RewardTerm, ...], Field(strict=False)] = Field((), description="reward terms: kind rule, model or judge (see README)")

    @model_validator(mode="after")
    def _names_and_gates(self) -> "RewardConfig":
        names = [t.name for t in self.terms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"reward.terms: names must be unique, repeated: {dup}")
        reserved = sorted(set(names) & set(RESERVED_TERM_NAMES))
        if reserved:
            raise ValueError(f"reward.terms: {reserved} is taken by rlpt's own reward/ metrics or info keys; pick "
                             f"another name")
        rules = {t.name for t in self.terms if isinstance(t, RuleTerm)}
        for t in self.terms:
            if t.gate is not None and t.gate not in rules:
                raise ValueError(f"reward.terms.{t.name}.gate: {t.gate!r} is not a rule term (rule terms: "
                                 f"{sorted(rules)}); only a rule term says correct")
            if t.gate == t.name:
                raise ValueError(f"reward.terms.{t.name}.gate: a term cannot gate itself")
        return self

    @property
    def rules(self) -> tuple[RuleTerm, ...]:
        return tuple(t for t in self.terms if isinstance(t, RuleTerm))


# ----------------------------------------------------------------------------------------------- environment
class EnvironmentConfig(_Section):
    """Multi-turn rollouts (README, "Multi-turn rollouts"). Unset `name` (the default): one prompt -> one
    completion, scored by the reward. Set: the model and the environment take turns; `rollout.max_new_tokens` is
    then the whole trajectory's token budget (model turns and observations together)."""

    name: str | None = Field(None, description="built-in environment (retry, python) or plug-in 'pkg.mod:Class'; "
                                               "unset = single-turn rollouts")
    args: dict[str, Any] = Field({}, description="keyword arguments of the environment's constructor "
                                                 "(e.g. {max_attempts: 3} for retry)")
    max_turns: int = Field(4, ge=1, description="model turns per trajectory at most; a trajectory that reaches it "
                                                "ends without done (its reward: the last step's)")
    turn_tokens: int | None = Field(None, ge=1, description="longest model turn in tokens (null = what is left of "
                                                            "rollout.max_new_tokens)")
    waves: int = Field(2, ge=1, description=(
        "the trajectories of a sampling round are split into this many waves that take turns at the engines: one "
        "wave's environment steps run while the next wave generates (1 = the engines wait for every environment "
        "round)"))
    observation_role: Literal["user", "tool"] = Field("user", description="the chat-template role of observations")
    reward: Literal["environment", "terms"] = Field("environment", description=(
        "environment: a trajectory's reward is its last step's; terms: the final model turn is scored by the "
        "reward terms (or the verifier), as a single-turn completion would be"))
    num_workers: int = Field(1, ge=1, description="environment actors (each runs environments in an isolated "
                                                  "child process)")
    timeout_s: float = Field(10.0, gt=0, description="longest one environment step (or reset) may take; past it the "
                                                     "trajectory ends as an error row")
    error_reward: float = Field(0.0, description="reward of a trajectory whose environment raised, hung or crashed")
    max_restarts: int = Field(3, ge=0, description="dead environment actors replaced per run before giving up")

    @property
    def enabled(self) -> bool:
        return self.name is not None


# ------------------------------------------------------------------------------------------------- algorithm
class OverlongConfig(_Section):
    enabled: bool = Field(False, description="DAPO soft overlong punishment of completions near "
                                             "rollout.max_new_tokens")
    buffer_len: int = Field(4, ge=1, description="the penalty ramps over the last buffer_len tokens before "
                                                 "rollout.max_new_tokens")
    penalty: float = Field(1.0, ge=0, description="penalty at rollout.max_new_tokens (linear from 0 across the "
                                                  "buffer)")


class GRPOConfig(_Section):
    eps_low: float = Field(0.2, ge=0, description="PPO clip range below 1 of the token ratio")
    eps_high: float = Field(0.28, ge=0, description="DAPO clip-higher; set equal to eps_low for vanilla GRPO")
    beta: float = Field(0.05, ge=0, description="k3 KL weight; > 0 creates the reference actor")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        "token-mean", description="how token losses are averaged: over all tokens, per sequence then over sequences, "
        "or summed per sequence / max_new_tokens (Dr.GRPO)")
    scale_rewards: Literal["group", "none"] = Field("group", description=(
        "group: divide advantages by the group's reward std (GRPO); none: do not (Dr.GRPO)"))
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose rewards are all equal and refill the "
                                                      "batch")
    max_resample_tries: int = Field(3, ge=0, description="with dynamic_sampling: refills per step before training on "
                                                         "what there is")
    overlong: OverlongConfig = OverlongConfig()


class NFTConfig(_Section):
    normalize: Literal[0, 1, 2] = Field(1, description="prompt weight: 0 none, 1 (1-rq), 2 sqrt((1-rq)/rq)")
    neg_weight: float = Field(1.0, ge=0, description="1 = NFT, 0 = online RFT (positives only)")
    neg_clamp: float = Field(1.0, gt=0, description="eps: floor of the negative ratio's value (gradient passes)")
    max_resample_tries: int = Field(3, ge=0, description="refills after dropping groups with r_hat in {0, 1}")


class RFTConfig(_Section):
    mode: Literal["online", "rounds"] = Field("online", description="online: train on each step's correct samples; "
                                                                    "rounds: DART-style sample-then-train rounds")
    # rounds (DART-style) only:
    rounds: int = Field(10, ge=1, description="rounds of sampling then training")
    k_correct: int = Field(2, ge=1, description="uniform quota: correct samples wanted per prompt")
    quota: Literal["uniform", "prop2diff"] = Field("uniform", description=(
        "correct samples wanted per prompt: uniform (k_correct each) or prop2diff (more for harder prompts)"))
    max_trials: int = Field(64, ge=1, description="samples per prompt before giving up on its quota")
    prompts_per_round: int = Field(128, ge=1, description="prompts sampled per round")
    epochs: int = Field(4, ge=1, description="passes over a round's samples")
    restart: Literal["continue", "base"] = Field("continue", description="each round from the last policy or base")


class DPOConfig(_Section):
    rounds: int = Field(30, ge=1, description="rounds of sampling, pairing and training")
    prompts_per_round: int = Field(128, ge=1, description="prompts sampled per round")
    samples_per_prompt: int = Field(16, ge=2, description="K samples per prompt to build pairs from")
    pairing: Literal["best_worst", "random"] = Field("best_worst", description=(
        "best_worst: the best correct vs the worst incorrect sample of a prompt; random: a random correct vs a "
        "random incorrect one"))
    beta: float = Field(0.1, gt=0, description="DPO temperature")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO: assumed share of flipped "
                                                                  "preference labels")
    nll_alpha: float = Field(0.0, ge=0, description="IRPO: weight of the winner's length-normalised NLL")
    reference: Literal["initial", "previous"] = Field("previous", description=(
        "initial: the starting model; previous: the policy at the start of each round"))
    epochs: int = Field(4, ge=1, description="passes over a round's pairs")


class GSPOConfig(_Section):
    eps_low: float = Field(3e-4, ge=0, lt=1, description="clip range below 1 of the sequence ratio (paper: 3e-4)")
    eps_high: float = Field(4e-4, ge=0, description="clip range above 1 of the sequence ratio (paper: 4e-4)")


class RLOOConfig(_Section):
    eps_low: float = Field(0.2, ge=0, lt=1, description="PPO clip of the token ratio (acts with several "
                                                         "optimizer steps per batch)")
    eps_high: float = Field(0.28, ge=0, description="PPO clip range above 1 of the token ratio")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        "seq-mean-token-sum-norm", description="default: token sum per sequence, mean over sequences, / max_new_tokens")


class AlgorithmConfig(_Section):
    name: Literal["grpo", "nft", "rft", "dpo", "gspo", "rloo"] = Field("grpo", description=(
        "which algorithm trains: its section below holds its settings"))
    grpo: GRPOConfig = GRPOConfig()
    nft: NFTConfig = NFTConfig()
    rft: RFTConfig = RFTConfig()
    dpo: DPOConfig = DPOConfig()
    gspo: GSPOConfig = GSPOConfig()
    rloo: RLOOConfig = RLOOConfig()


# --------------------------------------------------------------------------------------------------- learner
class OffPolicyConfig(_Section):
    correction: Literal["tis", "token_mask", "seq_mask", "none"] = Field("tis", description=(
        "with rollout.max_staleness >= 1: decoupled PPO (the clip is against the learner's logprobs at the start "
        "of the step) weighted by pi_prox / pi_behaviour, truncated at cap (tis), or tokens (token_mask) / whole "
        "samples by their geometric mean (seq_mask) outside [1/cap, cap] masked; none = plain PPO against "
        "learner.old_logprobs (rlpt.algorithms.off_policy)"))
    cap: float = Field(2.0, gt=1, description="C, the importance-weight cap of the correction")
    trust_region: bool = Field(True, description=(
        "also give no gradient to a token the learner has already moved past [1 - clip_low, 1 + clip_high] of "
        "the behaviour policy in its advantage's direction (PPO's clip against the engine's policy; decoupled "
        "PPO's own clip is against the proximal policy and does not act with one optimizer step per step)"))
    clip_low: float = Field(0.2, ge=0, lt=1, description="the trust region below 1 (as algorithm.grpo.eps_low)")
    clip_high: float = Field(0.28, ge=0, description="the trust region above 1 (as algorithm.grpo.eps_high)")


class LearnerConfig(_Section):
    num_ranks: int = Field(1, ge=1, description="DeepSpeed data-parallel learner ranks")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: Annotated[tuple[float, float], Field(strict=False)] = Field((0.9, 0.999), description="AdamW betas")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description=(
        "learning-rate schedule after warmup"))
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps")
    micro_batch_size: int = Field(64, ge=1, description="sequences per forward/backward on one rank (gradient "
                                                        "accumulation above it)")
    mini_batches: int = Field(1, ge=1, description="optimizer steps per training step (PPO mini-batches)")
    ppo_epochs: int = Field(1, ge=1, description="passes over a step's batch")
    grad_clip: float = Field(1.0, ge=0, description="0 = off")
    old_logprobs: Literal["rollout", "recompute"] = Field("rollout", description=(
        "what the clipped ratio compares against: the engine's sampled-token logprobs (rollout) or the learner's "
        "before the update (recompute: a forward before the update; the first mini-batch's training forward "
        "when the model has no dropout)"))
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description=(
        "torch.distributed backend of the learner ranks: auto = nccl on GPU, gloo on CPU"))
    off_policy: OffPolicyConfig = OffPolicyConfig()


# ------------------------------------------------------------------------------------------------------ sync
class SyncConfig(_Section):
    bucket_mb: float = Field(256.0, gt=0, description="weight-sync bucket size in MB (flat buffers; the transfer "
                                                      "buffer holds one)")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description=(
        "backend of the weight-sync group: auto = nccl on GPU, gloo on CPU"))
    transport: Literal["auto", "shm", "broadcast"] = Field(
        "auto", description="shm: members map learner rank 0's shared memory (gloo, same node); broadcast: one "
        "broadcast per bucket over the group's backend; auto: shm when every member can, else broadcast")
    timeout_s: float = Field(120.0, gt=0, description="longest wait on a weight-sync step before the late member is "
                                                      "named")
    probe_tolerance: float = Field(1e-3, gt=0, description="max |engine - learner| logprob on the probe sequence")
    probe_every: int = Field(10, ge=1, description="probe every N-th version (1 = every sync); a group's first sync "
                                                   "after it forms (a new or replacement engine) is always probed. "
                                                   "Between probes logprob_gap/* (engine vs learner logprobs of the "
                                                   "trained tokens, every step) shows a drift")


# --------------------------------------------------------------------------------------------------- cluster
class FleetConfig(_Section):
    """The elastic rollout fleet (`cluster.rollout`): how many engines, and when to ask the autoscaler for more.

    The run starts `rollout.num_workers` engines. With `autoscale`, a policy looks at the share of step time spent
    waiting on rollouts: above `target_wait_share + band` it asks for one more engine (up to `max`), below
    `target_wait_share - band` one fewer (down to `min`), at most once per `cooldown_steps` steps. Engines that
    appear or go away between steps (a node added or preempted) are handled whether or not `autoscale` is on.
    """

    min: int | None = Field(None, ge=1, description="fewest engines; None = rollout.num_workers")
    max: int | None = Field(None, ge=1, description="most engines; None = rollout.num_workers")
    autoscale: bool = Field(False, description="let the policy below ask for more or fewer engines")
    target_wait_share: float = Field(0.5, gt=0, lt=1, description="wanted share of step time waiting on rollouts")
    band: float = Field(0.15, ge=0, lt=1, description="hysteresis around target_wait_share")
    cooldown_steps: int = Field(5, ge=0, description="steps between two scaling decisions")
    join_timeout_s: float = Field(300.0, gt=0, description="how long a requested engine may take to appear "
                                                             "(node boot, model load) before the request is dropped")


class ClusterConfig(_Section):
    address: str | None = Field(None, description="Ray address; None = RAY_ADDRESS or a local cluster")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs for a local cluster; None = enough for all")
    dashboard: bool = Field(False, description="start the Ray dashboard with a local cluster rlpt starts")
    dashboard_host: str = Field("127.0.0.1", description="where that dashboard binds; 0.0.0.0 exposes it to the "
                                                         "network (it can run arbitrary jobs: only on trusted nets)")
    gpus_per_learner: float = Field(0.0, ge=0, description="GPUs each learner rank reserves")
    gpus_per_engine: float = Field(0.0, ge=0, description="GPUs per tensor-parallel shard of an engine")
    learner_resources: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per learner rank, e.g. {rlpt_learner: 1} to pin "
                                          "learners to the on-demand node type of a cluster/ launcher file")
    engine_resources: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per rollout engine, e.g. {rlpt_rollout: 1} to put "
                                          "engines on the (spot) rollout node type")
    colocate: bool = Field(False, description="engines and learners may share GPUs (fractional requests); leave room "
                                              "with rollout.gpu_memory_utilization")
    threads_per_actor: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="torch/OpenMP threads of each learner rank, rollout engine and reference actor. auto: "
                            "on a one-node cluster every core of the node (phases run one after another, so each "
                            "actor has the cores during its own phase), split between the engines and the learner "
                            "ranks with rollout.max_staleness >= 1 (they run at the same time); on a multi-node "
                            "cluster the CPUs the actor reserves (Ray would otherwise give a num_cpus=1 actor ONE "
                            "thread)")
    rollout: FleetConfig = FleetConfig()


# ------------------------------------------------------------------------------------------------------ eval
class EvalConfig(_Section):
    """The evaluation set and its fixed sampling (`run.eval_every` during training, and `rlpt eval`): a greedy
    completion per prompt (greedy pass@1), and `samples` more at `temperature` for pass@k (unbiased estimator)
    and mean@n. Evaluation uses its own sampling seeds and never touches the training data order, so a run with
    evaluation trains exactly like one without, and resumes exactly."""

    holdout: int = Field(0, ge=0, description="prompts held out of the training data as the evaluation set (drawn "
                                              "with run.seed; never trained on)")
    path: str | None = Field(None, description="an evaluation prompt file instead (.jsonl or .parquet, read with "
                                               "the data.columns and data.answer settings)")
    num_prompts: int | None = Field(None, ge=1, description="evaluate at most this many prompts of the set")
    samples: int = Field(4, ge=0, description="sampled completions per prompt for pass@k and mean@n (0 = greedy "
                                              "only)")
    pass_k: IntTuple = Field((1,), description="the k of pass@k, each at most samples")
    temperature: float | None = Field(None, gt=0, description="temperature of the sampled completions; null = "
                                                              "rollout.temperature")

    @model_validator(mode="after")
    def _consistent(self) -> "EvalConfig":
        if self.holdout and self.path is not None:
            raise ValueError("set one of eval.holdout (held-out training prompts) or eval.path (a file), not both")
        too_big = [k for k in self.pass_k if not 1 <= k <= self.samples]
        if self.samples and too_big:
            raise ValueError(f"eval.pass_k {list(too_big)} must be between 1 and eval.samples={self.samples}")
        return self

    @property
    def has_set(self) -> bool:
        return bool(self.holdout) or self.path is not None


# ------------------------------------------------------------------------------------------------------- run
class RunConfig(_Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", description="run directory name under run.root")
    root: str = Field("runs", description="run directories go to <root>/<name>; the tiny-model cache too")
    steps: int = Field(250, ge=1, description="training steps of the online loops (grpo, nft, gspo, rloo, rft "
                                              "online); rounds-based loops count algorithm.<name>.rounds")
    seed: int = Field(0, description="seed of the data order and of every sampling request (same seed, same run)")
    checkpoint_every: int = Field(0, ge=0, description="0 = only at the end")
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept; older ones are deleted")
    log_rollouts: bool = Field(True, description="write every rollout to <run dir>/rollouts/*.parquet")
    tensorboard: bool = Field(True, description="write TensorBoard events next to metrics.jsonl")
    eval_every: int = Field(0, ge=0, description="evaluate on the eval section's set every N steps, after the "
                                                 "step's sync, logged as eval/* in that step's row (0 = never)")
    actor_timeout_s: float = Field(600.0, gt=0, description="longest wait on any actor call before a clear error")
    log_level: Literal["quiet", "verbose"] = Field(
        "quiet", description="quiet: the console shows rlpt's progress and events, every actor's output (vLLM, Ray, "
                             "DeepSpeed, transformers) goes to <run dir>/logs/; verbose: actor output is also "
                             "streamed to the console")


class RlptConfig(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    verifier: VerifierConfig = VerifierConfig()
    reward: RewardConfig = RewardConfig()
    environment: EnvironmentConfig = EnvironmentConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    learner: LearnerConfig = LearnerConfig()
    sync: SyncConfig = SyncConfig()
    cluster: ClusterConfig = ClusterConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _fleet_bounds(self) -> "RlptConfig":
        lo, hi = self.fleet_bounds()
        n = self.rollout.num_workers
        if not lo <= n <= hi:
            raise ValueError(f"cluster.rollout: need min <= rollout.num_workers <= max, got min={lo}, "
                             f"num_workers={n}, max={hi}")
        return self

    @model_validator(mode="after")
    def _partial_rollouts(self) -> "RlptConfig":
        if self.rollout.partial_tokens and not self.rollout.max_staleness:
            raise ValueError("rollout.partial_tokens needs rollout.max_staleness >= 1 (weights change between "
                             "segments only while the engines generate ahead of the learner)")
        return self

    @model_validator(mode="after")
    def _eval_set(self) -> "RlptConfig":
        if self.run.eval_every and not self.eval.has_set:
            raise ValueError("run.eval_every needs an evaluation set: eval.holdout (prompts held out of the "
                             "training data) or eval.path (a file)")
        return self

    def fleet_bounds(self) -> tuple[int, int]:
        """(fewest, most) rollout engines; unset bounds default to rollout.num_workers."""
        f = self.cluster.rollout
        n = self.rollout.num_workers
        return (n if f.min is None else f.min), (n if f.max is None else f.max)


# ---------------------------------------------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` and `3E5` as floats (YAML 1.1 needs a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|" r"^[-+]?(?:\d[\d_]*)\.\d*(?:[eE][-+]?\d+)?$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (so `true`, `3`, `[1, 2]`, `null` work)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected KEY.PATH=VALUE")
    parts = key.strip().split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = parse_yaml(raw, f"override {override!r}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RlptConfig:
    """Read `path` (None = built-in defaults), apply dotted overrides, validate strictly, return a frozen config."""
    tree: Any = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        tree = parse_yaml(p.read_text(encoding="utf-8"), source)
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(tree).__name__}")
    for ov in overrides:
        apply_override(tree, ov)
    try:
        return RlptConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section that holds `loc[-1]`."""
    model: Any = RlptConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)


_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string"}


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "<top level>"
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc)) or "?"
            lines.append(f"  {key}: unknown key (allowed here: {allowed})")
            continue
        kind = e["type"].split("_")[0]
        expected = _EXPECTED.get(kind)
        if expected and e["type"].endswith("_type"):
            lines.append(f"  {key}: expected {expected}, got {got!r} ({type(got).__name__})")
        else:
            lines.append(f"  {key}: {e['msg']} (got {got!r})")
    return "\n".join(lines)


def dump_config(cfg: RlptConfig) -> str:
    """The resolved config as YAML (every key, defaults included), loadable by `load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: RlptConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dump_config(cfg), encoding="utf-8")
    tmp.replace(path)
