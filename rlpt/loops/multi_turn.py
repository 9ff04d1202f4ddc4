"""Multi-turn sampling (issue 17): the model and an environment take turns, token in / token out.

The sampler has the single-turn sampler's shape, (prompts, seeds) -> G scored samples per prompt, so every loop
that takes a `Sampler` runs multi-turn unchanged: one `ScoredRollout` per trajectory, its reward the trajectory's,
GRPO's group the G trajectories of a prompt. A trajectory (rlpt.trajectory) keeps the engine's sampled ids and
logprobs of every model turn and the observation ids appended between them; its `loss_mask_T` leaves observation
tokens out of every loss.

A sampling round goes turn by turn over all its trajectories at once: every open trajectory's next model turn is
one request to the rollout fleet (P x G in flight, spread over the engines as single-turn prompts are), then every
open trajectory's environment step is one call to the environment pool (rlpt.environments.replay: isolated, with
timeouts and error rows). Limits: `environment.max_turns` model turns, `rollout.max_new_tokens` tokens after the
prompt in all (model turns and observations), `environment.turn_tokens` per model turn. A trajectory ends when its
environment says done, at either limit (without done: its reward is the last step's), or with an error row: the
environment raised, hung or crashed, or an observation left no room for another model turn ("too_long: ...").

Each turn is stamped with the policy version that sampled it; in the asynchronous loop the engines may take new
weights between two turns (the `generate` given here holds the engines for one turn only), so the staleness bound
counts a trajectory's oldest turn, as it counts a partial rollout's oldest segment.
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

from rlpt.config import RlptConfig
from rlpt.environments.replay import EnvItem
from rlpt.isolation import Verdict
from rlpt.loops.common import VerifierService
from rlpt.metrics import PhaseTimer
from rlpt.trajectory import Observations, Trajectory
from rlpt.types import Prompt, Rollout, SamplingSpec, ScoredRollout

Generate = Callable[[Sequence[Prompt], Sequence[int], SamplingSpec], list[Rollout]]


class EnvironmentService(Protocol):
    def score_items(self, items: Sequence[EnvItem]) -> list[Verdict]: ...


@dataclass(frozen=True)
class MultiTurn:
    """What a multi-turn run adds to the workers: the environment pool, how observations become ids, and how the
    driver decodes a model turn it had to cut to the trajectory's budget."""

    envs: EnvironmentService
    observations: Observations
    decode: Callable[[Sequence[int]], str]


@dataclass
class _Open:
    """One trajectory being sampled."""

    traj: Trajectory
    seed: int
    turns: tuple[str, ...] = ()  # the model turns' texts (what the environment reads)
    transcript: list[tuple[str, str]] = field(default_factory=list)  # (role, text) of every turn, for the logs
    verdict: Verdict | None = None  # the last environment step's
    end: str | None = None  # "done", "max_turns", "budget", "error"
    violations: int = 0  # steps whose info says violation (the python tool's sandbox statuses)
    finish: str = "stop"
    engine: str = ""


def turn_seed(seed: int, turn: int) -> int:
    """A trajectory's request seed for model turn `turn` (turn 0 keeps the single-turn seed)."""
    return (seed + turn * 0x9E3779B97F4A7C15) % (2**62)


def multi_turn_sampler(cfg: RlptConfig, generate: Generate, mt: MultiTurn, final: VerifierService,
                       timer: PhaseTimer, spec: SamplingSpec | None = None
                       ) -> Callable[[Sequence[Prompt], Sequence[int]], list[ScoredRollout]]:
    """The Sampler of a multi-turn run. `final` scores the final model turns when environment.reward is terms.
    `spec`: how to sample (n trajectories per prompt, temperature, ...; its max_tokens is ignored: the budget is
    rollout.max_new_tokens); default the training's (rollout.*). Evaluation passes its greedy and sampled specs."""
    r, e = cfg.rollout, cfg.environment
    spec = spec or SamplingSpec(n=r.samples_per_prompt, max_tokens=r.max_new_tokens, temperature=r.temperature,
                                top_p=r.top_p, top_k=r.top_k, stop=r.stop)

    def sample(batch: Sequence[Prompt], seeds: Sequence[int]) -> list[ScoredRollout]:
        opens = [_Open(Trajectory(p, i), s + i) for p, s in zip(batch, seeds) for i in range(spec.n)]
        with timer.phase("verify"):
            _env_round(mt, opens, r.max_new_tokens, e.error_reward, last=False)  # the resets
        _turns(cfg, spec, generate, mt, [opens[w::e.waves] for w in range(e.waves)], timer)
        with timer.phase("verify"):
            return _scored(cfg, opens, final)
    return sample


def _turns(cfg: RlptConfig, spec: SamplingSpec, generate: Generate, mt: MultiTurn, waves: list[list[_Open]], timer: PhaseTimer) -> None:
    """Take turns until every trajectory has ended. The waves take turns at the engines: while one wave's
    environment steps run (on a helper thread), the next wave generates, so with two or more waves the engines
    do not wait for the environments (unless those are slower than a generation). `verify` times only the wait
    for an environment round that generation did not cover."""
    e, budget = cfg.environment, cfg.rollout.max_new_tokens
    turns = [0] * len(waves)
    pending: dict[int, Future[None]] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="rlpt-env") as steps:
        for k in itertools.count():
            w = k % len(waves)
            if w in pending:  # this wave's previous environment round: its trajectories' next turns need it
                with timer.phase("verify"):
                    pending.pop(w).result()
            live = [o for o in waves[w] if o.end is None] if turns[w] < e.max_turns else []
            if live:
                with timer.phase("rollout"):
                    _model_round(cfg, spec, generate, mt, live, turns[w])
                turns[w] += 1  # the last model turn is stepped too: its step gives the reward
                pending[w] = steps.submit(_env_round, mt, live, budget, e.error_reward, turns[w] == e.max_turns)
            if not pending and all(o.end is not None for wave in waves for o in wave):
                return


def _model_round(cfg: RlptConfig, spec: SamplingSpec, generate: Generate, mt: MultiTurn, live: list[_Open], turn: int) -> None:
    """Every open trajectory's next model turn, in one request to the fleet. A turn is cut to what is left of
    the trajectory's budget (the engine is asked for the most any of them may take: one request, not one per
    length; the kept tokens are exactly what a request for fewer would have sampled)."""
    r, e = cfg.rollout, cfg.environment
    cap = e.turn_tokens or r.max_new_tokens
    allow = [min(cap, r.max_new_tokens - len(o.traj.response_ids_T)) for o in live]
    requests = [replace(o.traj.prompt, prompt_ids=o.traj.context_ids) for o in live]
    outs = generate(requests, [turn_seed(o.seed, turn) for o in live], replace(spec, n=1, max_tokens=max(allow)))
    if len(outs) != len(live):
        raise RuntimeError(f"multi-turn: {len(outs)} model turns back for {len(live)} trajectories")
    for o, out, n in zip(live, outs, allow):
        ids, lps, text, finish = out.response_ids_T, out.logprobs_T, out.text, out.finish_reason
        if len(ids) > n:
            ids, lps, finish = ids[:n], lps[:n], "length"
            text = mt.decode(ids)
        o.traj = o.traj.with_model_turn(ids, lps, out.policy_version)
        o.turns += (text,)
        o.transcript.append(("assistant", text))
        o.finish, o.engine = finish, out.engine


def _env_round(mt: MultiTurn, live: list[_Open], budget: int, error_reward: float, last: bool) -> None:
    """Every open trajectory's environment step (its reset when it has no model turn yet), in one pool call; then
    each one ends (done, error, turn limit, budget) or gets its observation appended."""
    verdicts = mt.envs.score_items([(o.traj.prompt, (o.traj.sample_index, o.turns)) for o in live])
    for o, v in zip(live, verdicts):
        o.verdict = v
        _, _, info, error = v
        o.violations += bool(info.get("env", {}).get("violation"))
        if error is not None:
            o.end = "error"
        elif info.get("done"):
            o.end = "done"
        elif last:
            o.end = "max_turns"
        else:
            error = _observe(mt, o, info.get("observation"), budget)
            if error is not None:
                o.verdict, o.end = (error_reward, None, info, error), "error"


def _observe(mt: MultiTurn, o: _Open, observation: str | None, budget: int) -> str | None:
    """Append the observation's ids, or end the trajectory when its budget is spent; an error row's message for
    an observation that cannot be appended."""
    used = len(o.traj.response_ids_T)
    if used >= budget:
        o.end = "budget"
        return None
    if observation is None:  # a reset with no first observation; a step always has one unless done
        return None
    first = not o.traj.turns
    if first and mt.observations.after is not None:
        return ("reset_observation: the environment's reset() returned an observation, but the prompt is rendered "
                "through the chat template and already opens the model's turn; return None and put it in the prompt")
    last = o.traj.turns[-1] if o.traj.turns else None
    ids = mt.observations.ids(observation, last.ids[-1] if last is not None and last.sampled and last.ids else None)
    if used + len(ids) >= budget:  # not even one model token would fit after it
        return (f"too_long: observation of {len(ids)} tokens, {budget - used} of the trajectory's {budget} tokens "
                f"left (rollout.max_new_tokens)")
    o.traj = o.traj.with_observation(tuple(ids))
    o.transcript.append(("observation", observation))


def _rollout(o: _Open, version: int) -> Rollout:
    """The trajectory as a rollout. One that failed at its reset has no tokens at all (an error row that trains
    nothing); it is stamped `version`, the round's oldest, so it counts as no staler than its group."""
    if not any(turn.sampled for turn in o.traj.turns):
        return Rollout(o.traj.prompt, o.traj.sample_index, (), (), "", "stop", version, o.engine)
    return o.traj.to_rollout(o.turns[-1] if o.turns else "", o.finish, o.engine)


def _scored(cfg: RlptConfig, opens: list[_Open], final: VerifierService) -> list[ScoredRollout]:
    """One ScoredRollout per trajectory. The rollout's text is the final model turn (what a verifier reads); the
    whole transcript, the ending and the last step's info ride in `info`."""
    versions = [t.version for o in opens for t in o.traj.turns if t.sampled]
    rollouts = [_rollout(o, min(versions, default=0)) for o in opens]
    by_terms = cfg.environment.reward == "terms"
    rescored = iter(final.score([ro for ro, o in zip(rollouts, opens) if o.end != "error"]) if by_terms else [])
    out = []
    for ro, o in zip(rollouts, opens):
        assert o.verdict is not None
        reward, correct, info, error = o.verdict
        trajectory = {"turns": [list(t) for t in o.transcript], "end": o.end, "model_turns": o.traj.model_turns,
                      "sandbox_violations": o.violations, "env": info.get("env", {})}
        if by_terms and o.end != "error":
            s = next(rescored)
            out.append(replace(s, info={**s.info, "trajectory": trajectory}))
        else:
            out.append(ScoredRollout(ro, reward, correct, {"trajectory": trajectory}, error))
    return out
