"""What every loop talks to (small Protocols, so loops run with fakes in tests and with Ray actors for real) and
the bookkeeping every loop shares: run directory, per-step rollout metrics, checkpoints with retention, the end
of a step."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Protocol, Sequence, TypeVar

import torch

from rlpt.algorithms import algorithm_of
from rlpt.config import RlptConfig
from rlpt.types import Prompt, Rollout, SamplingSpec, ScoredRollout, SyncReport, TrainBatch

if TYPE_CHECKING:
    from rlpt.loops.multi_turn import MultiTurn
    from rlpt.metrics import MetricsWriter, PhaseTimer


class RolloutService(Protocol):
    def generate(self, prompts: Sequence[Prompt], seeds: Sequence[int], spec: SamplingSpec,
                 account: bool = True, on_chunk: Callable[[int, list[Rollout]], None] | None = None,
                 prefix_lens: Sequence[int] | None = None) -> list[Rollout]:
        """`account=False` (evaluation): the engines' time is not counted as the step's rollout time.
        `on_chunk(first prompt index, rollouts)`: called as each chunk is done (streaming verification).
        `prefix_lens[j]`: prompt j ends with that many response tokens of a partial rollout being continued."""
        ...


class VerifierService(Protocol):
    def score(self, rollouts: Sequence[Rollout]) -> list[ScoredRollout]: ...


class ReferenceService(Protocol):
    def logprobs(self, input_ids_B_T: torch.Tensor, attention_mask_B_T: torch.Tensor) -> torch.Tensor: ...


class LearnerService(Protocol):
    def train_step(self, batch: TrainBatch, step: int) -> dict[str, float]: ...

    def save_hf(self, out_dir: Path) -> None: ...

    def save_state(self, out_dir: Path) -> None: ...


class ResettableLearner(LearnerService, Protocol):
    """What the quota-rounds loop needs: a learner it can send back to the base model (restart: base)."""

    def reset_to_base(self) -> None: ...


class SyncService(Protocol):
    def sync(self, version: int) -> SyncReport: ...  # returns once every engine holds `version`

    def hand_off(self, version: int) -> SyncReport: ...  # returns once sent; engines load it before their next call

    def settle(self) -> None: ...  # waits for the engines' loads of the last hand-off (raises a failed one)


class HealthService(Protocol):
    """The one source of the fault and fleet metrics (faults/*, fleet/*), read at the end of every step."""

    def metrics(self) -> dict[str, float]: ...


L = TypeVar("L", bound=LearnerService)


@dataclass
class Workers(Generic[L]):
    rollout: RolloutService
    verifier: VerifierService
    learner: L
    sync: SyncService
    health: HealthService
    reference: ReferenceService | None = None
    reward: VerifierService | None = None  # the training reward with reward.terms (rlpt.rewards); else the verifier
    multi_turn: "MultiTurn | None" = None  # the environment pool and observation tokenizer (environment.name)

    @property
    def rewarder(self) -> VerifierService:
        """What scores training samples; `verifier` alone scores evaluations (accuracy, whatever the reward)."""
        return self.verifier if self.reward is None else self.reward


StepCallback = Callable[[int, dict[str, float]], None]


def total_steps(cfg: "RlptConfig") -> int:
    """Rows of metrics.jsonl a run writes: steps for the online loops, rounds for the round loops."""
    return algorithm_of(cfg).steps(cfg)


def error_kind(error: str) -> str:
    """The metric name of an error row: its prefix before ":" ("timeout", "crash" from rlpt.isolation, the exception
    class of a raising verifier), lower-cased with anything outside [a-z0-9_] as "_"; the code verifier's
    "SandboxViolation: memory: ..." counts as "sandbox_memory".

    >>> error_kind("timeout: verifier x took longer than 1s"), error_kind("SandboxViolation: write_outside: open")
    ('timeout', 'sandbox_write_outside')
    >>> error_kind("RuntimeError: boom"), error_kind("")
    ('runtimeerror', 'unknown')
    """
    head, _, rest = error.partition(":")
    if head == "SandboxViolation":
        head = "sandbox_" + rest.strip().partition(":")[0]
    kind = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in head.strip().lower())[:40]
    return kind.strip("_") or "unknown"


def correct_frac(scored: Sequence[ScoredRollout]) -> float | None:
    """Share of verified-correct samples, over the samples whose correctness is known (an error row counts as not
    correct); None when the verifier gave no correctness at all (a graded reward): unknown is not zero.

    >>> from rlpt.types import Prompt, Rollout
    >>> ro = Rollout(Prompt("p", "q"), 0, (1,), (-1.0,), "x", "stop", 0)
    >>> correct_frac([ScoredRollout(ro, 1.0, True), ScoredRollout(ro, 0.0, None, error="timeout: x")])
    0.5
    >>> correct_frac([ScoredRollout(ro, 0.7, None)]) is None
    True
    """
    # An error row lacks a verdict it should have had, unless the reward has no verdict to give: a composed
    # reward (rlpt.rewards) marks the rows whose rule term failed.
    known = [s for s in scored if s.correct is not None or (
        s.error is not None and (not s.terms or s.info.get("verdict_error")))]
    return sum(1 for s in known if s.correct) / len(known) if known else None


def term_means(scored: Sequence[ScoredRollout]) -> dict[str, float]:
    """reward/<term>: each reward term's mean value over the samples (composed rewards; empty otherwise).

    >>> from rlpt.types import Prompt, Rollout
    >>> ro = Rollout(Prompt("p", "q"), 0, (1,), (-1.0,), "x", "stop", 0)
    >>> term_means([ScoredRollout(ro, 1.0, True, terms={"acc": 1.0, "rm": 0.5}),
    ...             ScoredRollout(ro, 0.0, False, terms={"acc": 0.0, "rm": -1.5})])
    {'reward/acc': 0.5, 'reward/rm': -0.5}
    """
    names = list(scored[0].terms) if scored else []
    return {f"reward/{n}": sum(s.terms[n] for s in scored) / len(scored) for n in names}


def turn_metrics(scored: Sequence[ScoredRollout]) -> dict[str, float]:
    """Multi-turn runs (rlpt.loops.multi_turn): env/model_turns and env/observation_tokens per trajectory (means),
    env/end/<how> the share of trajectories that ended so (done, max_turns, budget, error), and
    env/sandbox_violations the steps whose sandbox run was stopped (python tool); {} otherwise."""
    trajs = [(s.rollout, s.info["trajectory"]) for s in scored if "trajectory" in s.info]
    if not trajs:
        return {}
    n = len(trajs)
    out = {"env/model_turns": sum(t["model_turns"] for _, t in trajs) / n,
           "env/observation_tokens": sum(len(r.loss_mask_T) - sum(r.loss_mask_T) for r, _ in trajs) / n,
           "env/sandbox_violations": float(sum(t["sandbox_violations"] for _, t in trajs))}
    for _, t in trajs:
        out[f"env/end/{t['end']}"] = out.get(f"env/end/{t['end']}", 0.0) + 1.0 / n
    return out


def rollout_metrics(scored: Sequence[ScoredRollout], learner_version: int) -> dict[str, float]:
    """Per-step sample metrics. A metric whose inputs are missing is absent, not 0: reward/std with fewer than two
    samples, reward/correct_frac when the verifier gives no correctness (rlpt.types.Score.correct is None)."""
    n = max(len(scored), 1)
    rewards = torch.tensor([s.reward for s in scored], dtype=torch.float64)
    # generated = sampled by the model: a multi-turn trajectory's observation tokens are not (loss_mask_T)
    lengths = [sum(s.rollout.loss_mask_T) if s.rollout.loss_mask_T else len(s.rollout.response_ids_T) for s in scored]
    errors_by_kind: dict[str, float] = {}  # verifier/errors/<kind>: present only for kinds seen this step
    for s in scored:
        if s.error is not None:
            key = f"verifier/errors/{error_kind(s.error)}"
            errors_by_kind[key] = errors_by_kind.get(key, 0.0) + 1.0
    known = {"reward/std": float(rewards.std()) if len(scored) > 1 else None, "reward/correct_frac": correct_frac(scored)}
    return {
        **errors_by_kind,
        **term_means(scored),
        **turn_metrics(scored),
        **{k: v for k, v in known.items() if v is not None},
        "reward/mean": float(rewards.mean()) if scored else 0.0,
        "verifier/errors": float(sum(1 for s in scored if s.error is not None)),
        "tokens/generated": float(sum(lengths)),
        "response/len_mean": sum(lengths) / n,
        "response/truncated_frac": sum(1 for s in scored if s.rollout.finish_reason == "length") / n,
        "staleness/mean": sum(learner_version - s.rollout.policy_version for s in scored) / n,
        "staleness/max": float(max((learner_version - s.rollout.policy_version for s in scored), default=0)),
    }


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


@dataclass(frozen=True)
class LoopState:
    """What a loop needs to continue exactly where a checkpoint was taken (saved as loop_state.json)."""

    next_step: int
    policy_version: int
    cursor: dict[str, Any]
    rng: list[Any] | None = None  # the loop's own random.Random (DPO pairing, RFT shuffling): `rng_state`
    # The asynchronous loop's finished-but-untrained steps (rlpt.loops.in_flight.to_json); `cursor` is then the
    # cursor after the last of them.
    in_flight: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"next_step": self.next_step, "policy_version": self.policy_version, "cursor": self.cursor,
                           "rng": self.rng, "in_flight": self.in_flight})

    @staticmethod
    def read(path: Path) -> "LoopState":
        d = json.loads(path.read_text())
        return LoopState(int(d["next_step"]), int(d["policy_version"]), dict(d["cursor"]), d.get("rng"),
                         list(d.get("in_flight", [])))


def rng_state(rng: random.Random) -> list[Any]:
    """random.Random state as JSON-able lists (restore with `set_rng_state`)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list[Any] | None) -> None:
    if state is None:
        raise ValueError("this checkpoint holds no RNG state for the loop (written by an older rlpt?): cannot "
                         "resume exactly")
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def save_checkpoint(learner: LearnerService, run_dir: Path, step: int, keep: int, state: LoopState) -> Path:
    """One atomic checkpoint: HF weights at the top (loadable by transformers and vLLM), `state/` (every learner
    rank's optimizer, LR schedule and RNG) and `loop_state.json`, written into `step_X.tmp` and renamed, so a
    crash mid-write never leaves a half checkpoint that looks complete. Keeps the last `keep`."""
    return finalize_checkpoint(write_checkpoint(learner, run_dir, step, state), keep)


def write_checkpoint(learner: LearnerService, run_dir: Path, step: int, state: LoopState) -> Path:
    """The writing half of `save_checkpoint`: everything into `step_X.tmp`, which it returns. Not a checkpoint
    until `finalize_checkpoint` renames it (`latest_checkpoint` ignores `.tmp` directories)."""
    tmp = checkpoint_dir(run_dir, step).with_name(f"step_{step:06d}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    learner.save_hf(tmp)
    learner.save_state(tmp / "state")
    (tmp / "loop_state.json").write_text(state.to_json())
    return tmp


def finalize_checkpoint(tmp: Path, keep: int) -> Path:
    """Rename a written `step_X.tmp` to `step_X` (the moment it becomes complete), then keep the newest `keep`."""
    out = tmp.with_name(tmp.name.removesuffix(".tmp"))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    done = sorted(p for p in out.parent.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return out


def latest_checkpoint(run_dir: Path, step: int | None = None) -> Path:
    """The newest complete checkpoint (or the one of `step`); a clear error when there is none."""
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*")
                  if p.is_dir() and not p.name.endswith(".tmp") and (p / "loop_state.json").is_file())
    if step is not None:
        done = [p for p in done if p.name == f"step_{step:06d}"]
    if not done:
        what = f"step {step}" if step is not None else "any step"
        raise FileNotFoundError(f"no complete checkpoint for {what} under {run_dir / 'checkpoints'}")
    return done[-1]


@dataclass(frozen=True)
class LoopRun:
    """What every step of one run of a loop shares."""

    cfg: RlptConfig
    workers: Workers[Any]
    run_dir: Path
    total: int  # steps (rounds) of the whole run
    writer: "MetricsWriter"
    timer: "PhaseTimer"
    on_step: StepCallback | None = None


@dataclass(frozen=True)
class StepEnd:
    """One finished step (or round): what it produced and where the loop stands after it."""

    step: int
    version: int  # the policy version after this step's sync
    trained: bool  # False when nothing was trained (and so nothing synced)
    metrics: dict[str, float]
    scored: Sequence[ScoredRollout]  # every rollout of the step, for the rollouts file
    t0: float  # perf_counter() at the step's start
    cursor: dict[str, Any]
    rng: random.Random | None = None  # the loop's own RNG, when it has one (saved in checkpoints)
    learner_version: int | None = None  # the version the step trained at (rollouts file; None: round loops)
    trained_samples: Sequence[ScoredRollout] = ()  # the samples in the trained batch (the rollouts file marks them)
    # The asynchronous loop: (cursor, in-flight steps) for a checkpoint, asked only when one is written.
    in_flight: Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]] | None = None


def end_step(run: LoopRun, end: StepEnd) -> None:
    """Shared end of a step (or round): rollouts file, checkpoint, the common metric keys, one metrics row.

    Only what needs the learner runs here: the rollouts file, the metrics row and the checkpoint's rename go to
    the run's writer thread (rlpt.background), in that order, so a checkpoint becomes complete only after its
    step's rows and files are on disk, and `run.writer` closing (the loop's `with`) writes everything queued."""
    from rlpt.rollout_log import write_rollouts

    cfg, metrics, timer = run.cfg, end.metrics, run.timer
    if cfg.run.log_rollouts:
        scored = list(end.scored)  # the loop may reuse its list; the thread writes this step's rollouts
        trained = {id(s) for s in end.trained_samples}
        run.writer.submit(f"rollouts of step {end.step}", lambda: write_rollouts(
            run.run_dir, end.step, scored, end.learner_version, [id(s) in trained for s in scored]))
    written = _write_checkpoint_if_due(run, end)
    # Nothing trained this step: no sync, so no sync/* or logprob_gap/* figures (absent, not 0; see sync/skipped).
    metrics["sync/skipped"] = 0.0 if end.trained else 1.0
    metrics.update({f"timing/{k}": 0.0 for k in ("rollout", "verify", "train", "sync")})
    metrics.update(timer.as_metrics())
    metrics["timing/step"] = time.perf_counter() - end.t0
    sampling_s = metrics["timing/rollout"] + metrics["timing/verify"]
    if sampling_s > 0:  # of the time taken to sample a step (the async loop: the producer's), the part spent
        # waiting for scores after generation ended (streamed scoring hides the rest under generation)
        metrics["timing/reward_wait_share"] = metrics["timing/verify"] / sampling_s
    rollout_s = metrics["timing/rollout"]
    if rollout_s:
        metrics["tokens/per_s"] = metrics["tokens/generated"] / rollout_s
    metrics["policy_version"] = float(end.version)
    metrics.update(run.workers.health.metrics())
    run.writer.write(end.step, metrics)
    if written is not None:
        keep = cfg.run.keep_checkpoints
        run.writer.submit(f"checkpoint {written.name}", lambda: finalize_checkpoint(written, keep))
    if run.on_step is not None:
        run.on_step(end.step, metrics)


def _write_checkpoint_if_due(run: LoopRun, end: StepEnd) -> Path | None:
    """Every `run.checkpoint_every` steps and after the last one: the learner writes `step_X.tmp` (timed as
    timing/checkpoint); the caller queues its rename. None when no checkpoint is due."""
    every = run.cfg.run.checkpoint_every
    if not ((every and (end.step + 1) % every == 0) or end.step + 1 == run.total):
        return None
    t = time.perf_counter()
    with run.timer.phase("checkpoint"):
        cursor, in_flight = (end.cursor, []) if end.in_flight is None else end.in_flight()
        state = LoopState(end.step + 1, end.version, cursor, None if end.rng is None else rng_state(end.rng),
                          in_flight)
        tmp = write_checkpoint(run.workers.learner, run.run_dir, end.step + 1, state)
    print(f"[rlpt] checkpoint {tmp.name.removesuffix('.tmp')} ({time.perf_counter() - t:.1f}s)", file=sys.stderr,
          flush=True)
    return tmp
