"""The asynchronous loop's producer: a driver thread that samples and scores the steps ahead of the learner, and
the few points where it and the learner loop (rlpt/loops/async_online.py) meet.

Admission (which step the producer may start, K = rollout.max_staleness):
  wait  step s starts once the learner has finished step s - K - 1 (its sync is done), and the learner's sync
        after step t waits until step t + K is finished. So step s is generated entirely by the weights after
        step s - K - 1 (a sample of policy version v meets learner version u <= v + K), whatever the timing:
        the run is deterministic and resumes exactly. With partial rollouts (rollout.partial_tokens) the sync
        waits only for the current segment, so step s + K may end on newer weights: the bound still holds (it
        counts a sample's oldest token), but which segment meets which version depends on timing.
  drop  the producer never waits for a version: it runs ahead while fewer than K + 1 finished steps wait to be
        trained. A slow learner then meets samples past the bound, which the loop drops and regenerates.
Engine calls from this driver take turns (`engines` lock): a generate round, a sync, an evaluation. A sync
therefore waits for the producer's current round (its chunks finish on the old weights, stamped so) and never
changes the fleet under a running round.

The producer also builds each step's batch and asks the reference model for its logprobs (a frozen reference:
they depend on the samples only), so the learner's path is train + its side of the sync.

Streaming verification: each chunk is scored (on one verifier thread, so the verifier pool sees one call at a
time) as soon as the engines return it, while the engines go on; a step is ready when its last chunk is scored.
With one sampling attempt per step (no dynamic sampling) the producer does not wait for that: it hands over a
future of the step and generates the next one, so the engines, the verifiers and the learner all work at once
(the wait-mode barrier waits for the generation only: the scoring changes no weights).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import replace
from typing import Any, Callable, Sequence

from rlpt.algorithms.base import OnlineHooks
from rlpt.config import RlptConfig
from rlpt.data import PromptCursor
from rlpt.errors import RunFault
from rlpt.loops.common import Workers
from rlpt.loops.in_flight import StepSamples
from rlpt.loops.multi_turn import multi_turn_sampler
from rlpt.loops.online import Sampler, attempt_seeds, collect_groups, sampling_spec, with_reference
from rlpt.metrics import PhaseTimer
from rlpt.loops.segments import generate_in_segments
from rlpt.types import Prompt, Rollout, SamplingSpec, ScoredRollout

POLL_S = 0.5  # how often a wait looks at the other side's failure


class ProducerStalled(RunFault, TimeoutError):
    pass


class SerialVerifier:
    """The verifier service with one call at a time: the streaming thread and an evaluation share it."""

    def __init__(self, verifier: Any) -> None:
        self.verifier, self.lock = verifier, threading.Lock()

    def score(self, rollouts: Sequence[Rollout]) -> list[ScoredRollout]:
        with self.lock:
            return self.verifier.score(rollouts)


class TurnLock:
    """A lock taken in arrival order (threading.Lock is not fair: the producer, taking it again right after each
    segment, could keep a waiting sync out indefinitely)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.next_ticket = self.serving = 0

    def __enter__(self) -> None:
        with self.cond:
            ticket, self.next_ticket = self.next_ticket, self.next_ticket + 1
            while self.serving != ticket:
                self.cond.wait()

    def __exit__(self, *exc: object) -> None:
        with self.cond:
            self.serving += 1
            self.cond.notify_all()


class Producer:
    def __init__(self, cfg: RlptConfig, hooks: OnlineHooks, w: Workers[Any], prompts: Sequence[Prompt],
                 cursor: PromptCursor, start_step: int, in_flight: Sequence[StepSamples], pad_id: int) -> None:
        self.cfg, self.hooks, self.prompts, self.cursor, self.pad_id = cfg, hooks, prompts, cursor, pad_id
        self.K, self.wait_mode = cfg.rollout.max_staleness, cfg.rollout.stale == "wait"
        self.steps = cfg.run.steps
        self.verifier = SerialVerifier(w.rewarder)  # the training reward
        # what the learner side uses too: evaluation scores with the verifier, which may be this same pool
        evaluator = self.verifier if w.reward is None else SerialVerifier(w.verifier)
        self.workers = replace(w, verifier=evaluator, reward=None if w.reward is None else self.verifier)
        self.engines = TurnLock()  # one engine call at a time from this driver: a round, a sync, an eval
        self.cursor_lock = threading.Lock()
        self.cond = threading.Condition()
        self.ready: dict[int, StepSamples | Future[StepSamples]] = {s.step: s for s in in_flight}
        self.trained_through = start_step - 1  # the last step whose sync (if any) is done
        self.next_step = max(self.ready, default=start_step - 1) + 1
        self.error: BaseException | None = None
        self.stopping = False
        # a step's generation is one engine round per sampling attempt (one per model turn, multi-turn)
        turns = cfg.environment.max_turns if cfg.environment.enabled else 1
        self.timeout_s = cfg.run.actor_timeout_s * (2 + self.hooks.resample_tries) * turns
        self.scoring = ThreadPoolExecutor(1, thread_name_prefix="rlpt-verify")
        self.finishing = ThreadPoolExecutor(1, thread_name_prefix="rlpt-finish")  # waits on `scoring`: its own
        self.thread = threading.Thread(target=self._run, name="rlpt-producer", daemon=True)

    # ------------------------------------------------------------------------------------------ producer side
    def start(self) -> "Producer":
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for step in range(self.next_step, self.steps):
                t = time.perf_counter()
                if not self._admit(step):
                    return
                samples = self._collect(step, time.perf_counter() - t)
                with self.cond:
                    self.ready[step] = samples
                    self.cond.notify_all()
        except BaseException as e:  # handed to the learner loop, which raises it
            with self.cond:
                self.error = e
                self.cond.notify_all()

    def _admit(self, step: int) -> bool:
        """Block until `step` may start (module docstring); False when the run is stopping."""
        def may() -> bool:
            if self.wait_mode:
                return self.trained_through >= step - self.K - 1
            return len(self.ready) < self.K + 1  # finished (or being scored), not yet taken by the learner

        with self.cond:
            while not (self.stopping or may()):
                self.cond.wait(POLL_S)
            return not self.stopping

    def _collect(self, step: int, admit_s: float) -> "StepSamples | Future[StepSamples]":
        """The step's samples; with one sampling attempt (no dynamic sampling, whole completions) a future of
        them: the generation is done here, its scoring finishes on the verifier threads while the engines go on
        to the next step (so a slow verifier costs max(generation, verification), not their sum)."""
        timer = PhaseTimer()
        if self.hooks.resample_tries == 0 and not self.cfg.rollout.partial_tokens and self.workers.multi_turn is None:
            P = self.cfg.rollout.prompts_per_step
            with self.cursor_lock:
                taken = self.cursor.take(P)
                cursor = self.cursor.state_dict()
            gather = self._stream([self.prompts[i] for i in taken], attempt_seeds(self.cfg, step, 0, P), timer)

            def finish() -> StepSamples:
                # the one attempt of collect_groups, on the samples generated above (same prompts, same seeds)
                kept, seen, _ = collect_groups(self.cfg, self.hooks, lambda batch, seeds: gather(), self.prompts,
                                               lambda n: taken, step)
                return self._samples(step, kept, seen, cursor, timer, admit_s)
            return self.finishing.submit(finish)
        with self.cursor_lock:  # the drop mode's refills take prompts from the learner thread
            kept, seen, _ = collect_groups(self.cfg, self.hooks, self.sampler(timer), self.prompts, self.cursor.take,
                                           step)
            cursor = self.cursor.state_dict()
        return self._samples(step, kept, seen, cursor, timer, admit_s)

    def _samples(self, step: int, kept: list[ScoredRollout], seen: list[ScoredRollout], cursor: dict[str, Any],
                 timer: PhaseTimer, admit_s: float) -> StepSamples:
        """The step's samples with their batch and the reference's logprobs (off the learner's path)."""
        batch = self.hooks.build_batch(kept, self.pad_id)
        batch = None if batch is None else with_reference(self.workers, batch, timer)
        return StepSamples(step, kept, seen, cursor, {**timer.totals(), "producer_wait": admit_s}, batch, True)

    def _stream(self, batch: Sequence[Prompt], seeds: Sequence[int], timer: PhaseTimer
                ) -> Callable[[], list[ScoredRollout]]:
        """Generate one round under the engines lock, each chunk handed to the verifier thread as it comes back;
        returns what waits for the scores (timed as `verify`: the scoring that did not overlap the generation)."""
        scored: dict[int, Future[list[ScoredRollout]]] = {}

        def on_chunk(start: int, rollouts: list[Rollout]) -> None:
            scored[start] = self.scoring.submit(self.verifier.score, rollouts)

        with self.engines, timer.phase("rollout"):
            self.workers.rollout.generate(batch, seeds, sampling_spec(self.cfg), on_chunk=on_chunk)

        def gather() -> list[ScoredRollout]:
            with timer.phase("verify"):
                return [s for start in sorted(scored) for s in scored[start].result()]
        return gather

    def sampler(self, timer: PhaseTimer) -> Sampler:
        """Generate and score one round (`_stream`); with partial rollouts, one segment per turn of the engines
        lock (the learner's sync may come between two), then score; multi-turn, one model turn per turn of it."""
        if self.workers.multi_turn is not None:  # the engines are held one turn at a time: a sync may come between
            def turn(batch: Sequence[Prompt], seeds: Sequence[int], spec: SamplingSpec) -> list[Rollout]:
                with self.engines:
                    return self.workers.rollout.generate(batch, seeds, spec)
            return multi_turn_sampler(self.cfg, turn, self.workers.multi_turn, self.verifier, timer)
        tokens = self.cfg.rollout.partial_tokens
        if not tokens:
            return lambda batch, seeds: self._stream(batch, seeds, timer)()

        def segment(batch: Sequence[Prompt], seeds: Sequence[int], spec: SamplingSpec,
                    prefix_lens: Sequence[int] | None) -> list[Rollout]:
            with self.engines:
                return self.workers.rollout.generate(batch, seeds, spec, prefix_lens=prefix_lens)

        def sample_partial(batch: Sequence[Prompt], seeds: Sequence[int]) -> list[ScoredRollout]:
            with timer.phase("rollout"):
                rollouts = generate_in_segments(segment, batch, seeds, sampling_spec(self.cfg), tokens)
            with timer.phase("verify"):
                return self.scoring.submit(self.verifier.score, rollouts).result()
        return sample_partial

    # ------------------------------------------------------------------------------------------- learner side
    def take(self, step: int) -> StepSamples:
        """The samples of `step`, once the producer has them."""
        self._wait_for(lambda: step in self.ready, f"the samples of step {step}")
        with self.cond:
            item = self.ready.pop(step)
        return self._resolved(item, step)

    def _resolved(self, item: "StepSamples | Future[StepSamples]", step: int) -> StepSamples:
        if isinstance(item, StepSamples):
            return item
        try:
            return item.result(timeout=self.timeout_s)
        except FuturesTimeout:
            raise ProducerStalled(f"the samples of step {step} were not scored within {self.timeout_s:.0f}s (the "
                                  f"verifiers time out on their own calls; see their logs)") from None

    def refill(self, step: int, want: int, first_attempt: int, timer: PhaseTimer
               ) -> tuple[list[ScoredRollout], list[ScoredRollout]]:
        """`want` more groups for `step` from the current weights (drop mode, after stale groups were dropped)."""
        with self.cursor_lock:
            kept, seen, _ = collect_groups(self.cfg, self.hooks, self.sampler(timer), self.prompts, self.cursor.take,
                                           step, want=want, first_attempt=first_attempt)
        return kept, seen

    def before_sync(self, step: int) -> None:
        """Wait mode: the sync after `step` waits until step + K is finished (generated by the old weights).
        With partial rollouts it waits only for the current segment (the engines lock): the rest of step + K is
        generated by the new weights, its tokens stamped so."""
        if self.wait_mode and not self.cfg.rollout.partial_tokens:
            last = min(step + self.K, self.steps - 1)
            self._wait_for(lambda: max(self.ready, default=step) >= last, f"the samples of step {last}")

    def trained(self, step: int) -> None:
        """`step` is trained and synced: the producer may admit what waited for it."""
        with self.cond:
            self.trained_through = step
            self.cond.notify_all()

    def in_flight(self, step: int) -> tuple[dict[str, Any], list[StepSamples]]:
        """(cursor, finished untrained steps) for a checkpoint after `step`: in wait mode every step up to
        step + K (the uninterrupted run's next samples, all generated by now); in drop mode what is finished."""
        self.before_sync(step)
        with self.cond:
            items = [(s, self.ready[s]) for s in sorted(self.ready)]
        done = [self._resolved(item, s) for s, item in items]
        if done:
            return done[-1].cursor, done
        with self.cursor_lock:
            return self.cursor.state_dict(), []

    def _wait_for(self, ok: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        with self.cond:
            while not ok():
                if self.error is not None:
                    raise self.error
                if not self.thread.is_alive():
                    raise RuntimeError(f"the rollout producer stopped before {what}")
                if time.monotonic() > deadline:
                    raise ProducerStalled(f"the rollout producer did not deliver {what} within {self.timeout_s:.0f}s "
                                          f"(engines and verifiers time out on their own calls; see their logs)")
                self.cond.wait(POLL_S)

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=self.cfg.run.actor_timeout_s)
        # Queued scoring is cancelled; the call under way ends before the caller tears the actors down (else the
        # verifier pool would see its actor die and start a replacement that outlives the run).
        self.scoring.shutdown(wait=False, cancel_futures=True)
        self.finishing.shutdown(wait=True, cancel_futures=True)
        self.scoring.shutdown(wait=True)
