"""One TRL run of a workload, inside benchmarks/vs_trl/.venv-trl (TRL pinned by setup.sh): GRPOTrainer with the
workload's settings, generation by transformers' `generate` (use_vllm=False: TRL's vLLM path needs a GPU server or
colocation, and on 2 CPU cores HF generate is within 1.0-1.4x of vLLM-cpu, see shared/notes/cpu-stack.md).

TRL 1.16 times its phases only into W&B / MLflow / Trackio (trl.extras.profiling), so this runner times them
itself, without changing what runs: a GRPOTrainer subclass wraps `_generate` (rollout: tokenize, generate, decode)
and `_calculate_rewards` (verify), a callback closes each step. Train = end of `_prepare_inputs` to the end of the
step (loss, backward, clip, optimizer step). One JSON line per finished step goes to --out, flushed at once, so the
driver (compare.py) stamps its arrival exactly as it does rlpt's metrics.jsonl.

    benchmarks/vs_trl/.venv-trl/bin/python benchmarks/vs_trl/run_trl.py --workload tiny --assets DIR --steps 5 \
        --out steps.jsonl
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before the heavy imports: they are part of TRL's start-up

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, TextIO  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from arith_verifier import trl_reward  # noqa: E402
from workloads import CLIP_EPS, WORKLOADS, Workload  # noqa: E402

T_IMPORTED = time.perf_counter()


class StepPhases:
    """What the trainer hooks measure within the current step; written out and reset by StepLog at its end."""

    def __init__(self) -> None:
        self.rollout_s = 0.0
        self.verify_s = 0.0
        self.inputs_ready: float | None = None  # perf_counter() when the training batch was ready
        self.reward = 0.0
        self.tokens = 0


class TimedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer plus timers around generation and reward computation (behaviour unchanged)."""

    def __init__(self, *args: Any, phases: StepPhases, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phases = phases

    def _generate(self, prompts: list) -> Any:
        t = time.perf_counter()
        out = super()._generate(prompts)
        self.phases.rollout_s += time.perf_counter() - t
        return out

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
        t = time.perf_counter()
        rewards_N_F = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self.phases.verify_s += time.perf_counter() - t
        self.phases.reward = float(rewards_N_F.sum(dim=1).mean())
        return rewards_N_F

    def _generate_and_score_completions(self, inputs: Any) -> Any:
        out = super()._generate_and_score_completions(inputs)
        self.phases.tokens += int(out["completion_mask"].sum())  # completion tokens, EOS included (as vLLM counts)
        return out

    def _prepare_inputs(self, generation_batch: Any) -> Any:
        out = super()._prepare_inputs(generation_batch)
        self.phases.inputs_ready = time.perf_counter()
        return out


class StepLog(TrainerCallback):
    """Writes one JSON line per finished optimizer step: its duration since the previous step's end (since training
    began, for step 0), the phases, the mean reward and the generated tokens."""

    def __init__(self, phases: StepPhases, out: TextIO) -> None:
        self.phases, self.out = phases, out
        self.prev_end = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.prev_end = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now, p = time.perf_counter(), self.phases
        train_s = now - p.inputs_ready if p.inputs_ready is not None else float("nan")
        rec = {"step": state.global_step - 1, "step_s": now - self.prev_end, "rollout_s": p.rollout_s,
               "verify_s": p.verify_s, "train_s": train_s, "sync_s": 0.0, "reward": p.reward, "tokens": p.tokens}
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()
        self.phases.__init__()  # fresh figures for the next step
        self.prev_end = now


def grpo_config(w: Workload, steps: int, seed: int, out_dir: Path) -> GRPOConfig:
    """The workload's settings in TRL's terms (see workloads.py for what both systems share)."""
    return GRPOConfig(
        output_dir=str(out_dir), max_steps=steps, seed=seed, use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=w.batch, gradient_accumulation_steps=1, steps_per_generation=1,
        num_iterations=1, num_generations=w.samples_per_prompt, max_completion_length=w.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, use_vllm=False,
        beta=0.0, loss_type="dapo",  # dapo = sum over every completion token of the batch / their number
        scale_rewards="group", epsilon=CLIP_EPS, epsilon_high=CLIP_EPS,
        learning_rate=w.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0, shuffle_dataset=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description="one TRL GRPO run of a benchmark workload")
    p.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    p.add_argument("--assets", type=Path, required=True, help="the folder assets.py wrote")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="JSONL of per-step records")
    a = p.parse_args()
    w = WORKLOADS[a.workload]
    model_dir = a.assets / w.name / "model"
    rows = [json.loads(line) for line in (a.assets / w.name / "prompts.jsonl").read_text().splitlines()]
    # PreTrainedTokenizerFast, not AutoTokenizer: the saved tokenizer.json as is (the loader rlpt uses too).
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    phases = StepPhases()
    with a.out.open("w", encoding="utf-8") as out:
        trainer = TimedGRPOTrainer(
            model=model, reward_funcs=trl_reward, args=grpo_config(w, a.steps, a.seed, a.out.parent / "trl-output"),
            train_dataset=Dataset.from_list(rows), processing_class=tokenizer, phases=phases,
            callbacks=[StepLog(phases, out)])
        print(f"[trl] imports {T_IMPORTED - T_START:.1f}s, model + trainer {time.perf_counter() - T_IMPORTED:.1f}s; "
              f"torch threads {torch.get_num_threads()}; {a.steps} steps of {w.name}", flush=True)
        trainer.train()


if __name__ == "__main__":
    main()
