"""Composition root: config -> actors -> the algorithm's loop (`LOOPS[algorithm.loop(cfg)]`).

Everything Ray-specific about building the graph is here; the loops only see rlpt.loops.common.Workers.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from actors import placement
from actors.calls import gather
from actors.fleet import Fleet
from actors.learner import LearnerGroup, LearnerRank, LearnerRankLost
from actors.reference import ReferenceActor
from actors.rollout import RolloutPool, RolloutWorker, engine_options
from actors.sync_group import EngineSync, SyncMembership
from actors.reward_model import RewardModelWorker
from actors.verifier import (PoolScaler, ScorePool, VerifierPool, VerifierWorker, batch_timeout_of,
                             verifier_timeout_of)
from rlpt.algorithms import algorithm_of
from rlpt.algorithms.base import LoopKind, ReferenceUse
from rlpt.config import JudgeTerm, ModelTerm, RewardTerm, RlptConfig, RuleTerm
from rlpt.loops import async_online, dpo, online, rft
from rlpt.environments.replay import item_cost, load_env_stepper, shard_of
from rlpt.loops.common import LoopState, StepCallback, Workers, latest_checkpoint
from rlpt.loops.multi_turn import MultiTurn
from rlpt.metrics import truncate_metrics
from rlpt.models import decode_completion
from rlpt.prepare import PreparedRun, event, prepare
from rlpt.rewards import ComposedReward
from rlpt.trajectory import Observations

LOOPS: dict[LoopKind, Callable[..., None]] = {
    LoopKind.ONLINE: online.run,
    LoopKind.QUOTA_ROUNDS: rft.run,
    LoopKind.PAIR_ROUNDS: dpo.run,
}
# rollout.max_staleness >= 1: the loops that overlap generation with training (rlpt.prepare refuses the others)
ASYNC_LOOPS: dict[LoopKind, Callable[..., None]] = {LoopKind.ONLINE: async_online.run}


class RemoteReference:
    """ReferenceService over one ReferenceActor."""

    def __init__(self, actor: Any, timeout_s: float) -> None:
        self.actor, self.timeout_s = actor, timeout_s

    def logprobs(self, input_ids_B_T: torch.Tensor, attention_mask_B_T: torch.Tensor) -> torch.Tensor:
        import ray

        return ray.get(self.actor.logprobs.remote(input_ids_B_T, attention_mask_B_T), timeout=self.timeout_s)


@dataclass(frozen=True)
class GraphHealth:
    """HealthService: the fleet's metrics (faults/rollout_restarts, fleet/*), the verifier pool's restarts, the
    engines' own generate time of the step (timing/rollout_engine: the rest of timing/rollout is overhead), and
    each reward term's pool: its restarts and throughput (rollouts scored per second of its scoring calls)."""

    fleet: Fleet
    verifiers: VerifierPool
    reward_pools: dict[str, ScorePool]
    scalers: dict[str, PoolScaler]  # the reward pools with max_workers: resized here, once per step
    environments: ScorePool | None = None  # multi-turn runs (environment.name)

    def metrics(self) -> dict[str, float]:
        out = {**self.fleet.metrics(), "faults/verifier_restarts": float(self.verifiers.restarts),
               "faults/verifier_timeouts": float(self.verifiers.timeouts), **self.fleet.pool.take_engine_metrics()}
        if self.environments is not None:
            items, busy_s = self.environments.take_throughput()
            out["faults/environment_restarts"] = float(self.environments.restarts)
            out["faults/environment_timeouts"] = float(self.environments.timeouts)
            if items and busy_s > 0:
                out["env/steps_per_s"] = items / busy_s
        for name, pool in self.reward_pools.items():
            items, busy_s = pool.take_throughput()
            out[f"faults/reward_{name}_restarts"] = float(pool.restarts)
            out[f"faults/reward_{name}_timeouts"] = float(pool.timeouts)
            if items and busy_s > 0:
                out[f"reward/{name}/rollouts_per_s"] = items / busy_s
            if name in self.scalers:
                out.update({f"reward/{name}/{k}": v for k, v in self.scalers[name].update(busy_s).items()})
        return out


@dataclass
class Graph:
    workers: Workers[LearnerGroup]
    learner_ranks: list[Any]
    pool: RolloutPool
    verifier_pool: VerifierPool
    reward_pools: dict[str, ScorePool]
    env_pool: ScorePool | None
    reference: Any | None
    sync: EngineSync
    placement_group: Any
    fleet: Fleet
    threads: dict[str, int]  # torch threads each actor reports it computes with (learner rank 0, engines, reference)
    ready_s: dict[str, float]  # seconds from each actor's creation to ready
    ray_s: float  # connecting to (or starting) the Ray cluster

    @property
    def engines(self) -> list[Any]:
        return self.pool.workers

    def actors(self) -> list[Any]:
        return [*self.learner_ranks, *self.pool.workers, *self.verifier_pool.workers,
                *[w for p in self.reward_pools.values() for w in p.workers + p.pending()],
                *([] if self.env_pool is None else self.env_pool.workers + self.env_pool.pending()),
                *([self.reference] if self.reference else []), *self.fleet.shutdown()]


@dataclass(frozen=True)
class Factories:
    """How to start each kind of actor (the fleet and the verifier pool start replacements with these too)."""

    cfg: RlptConfig
    prep: PreparedRun
    threads: int = 1  # torch threads of learner ranks, engines and the reference (placement.actor_threads)

    @property
    def model_path(self) -> str:
        return str(self.prep.model_path)

    @property
    def log_dir(self) -> str | None:
        """Where actors write their output (run.log_level: quiet), None to leave it to Ray (verbose)."""
        quiet = self.cfg.run.log_level == "quiet" and self.prep.run_dir is not None
        return str(self.prep.run_dir / "logs") if quiet and self.prep.run_dir is not None else None

    def learner_rank(self, pg: Any, k: int) -> Any:
        import ray

        return ray.remote(LearnerRank).options(**placement.learner_options(self.cfg, pg, k),
                                        runtime_env=placement.thread_env(self.threads)).remote(
            k, self.cfg.learner.num_ranks, self.cfg, self.model_path, self.log_dir)

    def engine(self, name: str) -> Any:
        import ray

        return ray.remote(RolloutWorker).options(**placement.engine_options(self.cfg),
                                          runtime_env=placement.thread_env(self.threads)).remote(
            name, engine_options(self.cfg, self.model_path, self.prep.shape.max_model_len, self.prep.facts.eos_ids),
            self.model_path, self.log_dir)

    def verifier(self, name: str) -> Any:
        import ray

        v = self.cfg.verifier
        return ray.remote(VerifierWorker).options(**placement.cpu_actor_options()).remote(
            name, v.name, v.timeout_s, v.error_reward, self.log_dir)

    def reward_actor(self, term: RewardTerm, name: str) -> Any:
        return REWARD_ACTORS[type(term)](self, term, name)

    def rule_term(self, term: RuleTerm, name: str) -> Any:
        import ray

        return ray.remote(VerifierWorker).options(**placement.cpu_actor_options()).remote(
            name, term.verifier, term.timeout_s, term.error_reward, self.log_dir)

    def reward_model(self, term: ModelTerm, name: str) -> Any:
        import ray

        return ray.remote(RewardModelWorker).options(**placement.reward_options(term),
                                                     runtime_env=placement.thread_env(self.threads)).remote(
            name, term, self.cfg.model.dtype, self.log_dir)

    def judge(self, term: JudgeTerm, name: str) -> Any:
        import ray

        from actors.judge import JudgeWorker  # imports vLLM's entry points only where a judge is configured

        return ray.remote(JudgeWorker).options(**placement.reward_options(term),
                                               runtime_env=placement.thread_env(self.threads)).remote(
            name, term, self.cfg.model.dtype, self.cfg.run.seed, self.log_dir)

    def environment(self, name: str) -> Any:
        """An environment actor: environments run like verifiers, in a killable child process, one step a call
        (rlpt.environments.replay)."""
        import ray

        e = self.cfg.environment
        assert e.name is not None
        return ray.remote(VerifierWorker).options(**placement.cpu_actor_options()).remote(
            name, e.name, e.timeout_s, e.error_reward, self.log_dir, partial(load_env_stepper, args=e.args),
            "environment", item_cost, ENV_MAX_FAILURES)

    def reference(self) -> Any:
        import ray

        c = self.cfg
        return ray.remote(ReferenceActor).options(**placement.reference_options(c),
                                           runtime_env=placement.thread_env(self.threads)).remote(
            self.model_path, c.model.dtype, c.rollout.temperature, c.learner.micro_batch_size, self.log_dir)


REWARD_ACTORS: dict[type, Callable[[Factories, Any, str], Any]] = {
    RuleTerm: Factories.rule_term, ModelTerm: Factories.reward_model, JudgeTerm: Factories.judge}
REWARD_TIMEOUTS: dict[type, Callable[[Any], Callable[[int], float]]] = {
    RuleTerm: lambda t: verifier_timeout_of(t.timeout_s),
    ModelTerm: lambda t: batch_timeout_of(t.timeout_s, t.batch_size),
    JudgeTerm: lambda t: batch_timeout_of(t.timeout_s, t.batch_size),
}


def reward_pool_names(cfg: RlptConfig) -> dict[str, list[str]]:
    """Each reward term's actor names, e.g. reward-rm-0."""
    return {t.name: [f"reward-{t.name}-{i}" for i in range(t.num_workers)] for t in cfg.reward.terms}


def reward_pools(cfg: RlptConfig, make: Factories, actors: dict[str, list[Any]]) -> dict[str, ScorePool]:
    names = reward_pool_names(cfg)
    return {t.name: ScorePool(actors[t.name], names[t.name], REWARD_TIMEOUTS[type(t)](t), t.error_reward,
                              factory=lambda n, t=t: make.reward_actor(t, n), max_restarts=t.max_restarts,
                              start_timeout_s=cfg.run.actor_timeout_s)
            for t in cfg.reward.terms}


def reward_scalers(cfg: RlptConfig, pools: dict[str, ScorePool]) -> dict[str, PoolScaler]:
    return {t.name: PoolScaler(pools[t.name], t.num_workers, t.max_workers, t.target_busy_share)
            for t in cfg.reward.terms if t.max_workers is not None and t.max_workers > t.num_workers}


# An environment worker process that hangs or crashes on this many steps of one call gives up (VerifierProcessError,
# the run ends): a bound, so a broken environment is not retried for hours, but far above a verifier's 32, since one
# environment call carries a whole round (P x G trajectories).
ENV_MAX_FAILURES = 1024


def environment_names(cfg: RlptConfig) -> list[str]:
    return [f"environment-{i}" for i in range(cfg.environment.num_workers)] if cfg.environment.enabled else []


def multi_turn(cfg: RlptConfig, prep: PreparedRun, make: Factories, actors: list[Any]
               ) -> tuple[ScorePool | None, MultiTurn | None]:
    """The environment pool and what the multi-turn sampler needs beside it; (None, None) for single-turn runs."""
    if not cfg.environment.enabled:
        return None, None
    e, tok, eos = cfg.environment, prep.tokenizer, prep.facts.eos_ids
    envs = ScorePool(actors, environment_names(cfg), verifier_timeout_of(e.timeout_s * e.max_turns), e.error_reward,
                     factory=make.environment, max_restarts=e.max_restarts, start_timeout_s=cfg.run.actor_timeout_s,
                     shard_of=shard_of)
    return envs, MultiTurn(envs, Observations(tok, e.observation_role, eos),
                           lambda ids: decode_completion(tok, ids, eos))


def build_graph(cfg: RlptConfig, prep: PreparedRun,
                request_resources: Callable[[list[dict[str, float]]], None] | None = None,
                ray_s: float | None = None) -> Graph:
    """`request_resources` is how the fleet talks to the autoscaler (default: ray.autoscaler.sdk.request_resources);
    tests pass a stand-in that adds and removes simulated nodes. `ray_s`: the caller already started Ray (in that
    many seconds, placement.init_ray_while_importing); None: start or connect here."""
    import ray

    t = time.monotonic()
    if ray_s is None:
        placement.init_ray(cfg)
    started = time.monotonic()
    ray_s = started - t if ray_s is None else ray_s
    algo, make, T = algorithm_of(cfg), Factories(cfg, prep, placement.actor_threads(cfg)), cfg.run.actor_timeout_s
    K, N, M = cfg.learner.num_ranks, cfg.rollout.num_workers, cfg.verifier.num_workers
    # Start everything at once: engine and DeepSpeed start-up dominate and overlap.
    pg = placement.learner_placement_group(cfg, T)
    ranks = [make.learner_rank(pg, k) for k in range(K)]
    names, vnames = [f"rollout-{i}" for i in range(N)], [f"verifier-{i}" for i in range(M)]
    engines, verifiers = [make.engine(n) for n in names], [make.verifier(n) for n in vnames]
    terms = {t.name: t for t in cfg.reward.terms}
    rnames = reward_pool_names(cfg)
    scorers = {term: [make.reward_actor(terms[term], n) for n in ns] for term, ns in rnames.items()}
    enames = environment_names(cfg)
    env_actors = [make.environment(n) for n in enames]
    use = algo.reference(cfg)
    reference = make.reference() if use is not ReferenceUse.NONE else None
    layout = algo.layout(cfg)
    addr, port = ray.get(ranks[0].address.remote(), timeout=T)
    setups = [r.setup.remote(addr, port, layout.micro, layout.micro_per_rank, algo.lr_horizon(cfg)) for r in ranks]
    extra = [reference] if reference is not None else []
    flat_scorers = [a for term in rnames for a in scorers[term]]
    labels = ([f"learner rank {k}" for k in range(K)] + names + ["reference"] * len(extra) + vnames
              + [n for ns in rnames.values() for n in ns] + enames)
    ready: dict[str, float] = {}  # each actor's seconds from its creation to ready (the start-up event shows them)
    offset = time.monotonic() - started
    calls = (setups + [a.threads.remote() for a in engines + extra]
             + [v.ping.remote() for v in verifiers + flat_scorers + env_actors])
    got = gather("start-up", calls, labels, T, ready)
    ready = {k: v + offset for k, v in ready.items()}
    threads = {"learner": ray.get(ranks[0].threads.remote(), timeout=T),
               **dict(zip(names + ["reference"] * len(extra), got[K:K + N + len(extra)]))}
    learner = LearnerGroup(ranks, layout, cfg, prep.facts.pad_id, T)
    pool = RolloutPool(engines, names, T)
    fleet = Fleet(cfg, pool, make.engine, T, request_resources)
    membership = SyncMembership(cfg, ranks[0], addr, fleet,
                                reference if use is ReferenceUse.FOLLOWS_POLICY else None)
    membership.form()
    syncer = EngineSync(learner, membership, learner.sync_plan(), prep.shape.probe_ids, cfg.sync.probe_tolerance,
                        cfg.sync.timeout_s + 30, cfg.sync.probe_every)
    vpool = VerifierPool(verifiers, vnames, cfg.verifier.timeout_s, factory=make.verifier,
                         max_restarts=cfg.verifier.max_restarts, error_reward=cfg.verifier.error_reward,
                         start_timeout_s=T)
    rpools = reward_pools(cfg, make, scorers)
    epool, turns = multi_turn(cfg, prep, make, env_actors)
    workers = Workers(rollout=pool, verifier=vpool, learner=learner, sync=syncer,
                      health=GraphHealth(fleet, vpool, rpools, reward_scalers(cfg, rpools), epool),
                      reference=None if reference is None else RemoteReference(reference, T),
                      reward=ComposedReward(cfg.reward.terms, rpools) if rpools else None, multi_turn=turns)
    return Graph(workers, ranks, pool, vpool, rpools, epool, reference, syncer, pg, fleet, threads, ready, ray_s)


def shutdown(graph: Graph | None) -> None:
    import ray

    if graph is not None:
        if isinstance(graph.workers.reward, ComposedReward):
            graph.workers.reward.close()
        for actor in graph.actors():
            ray.kill(actor, no_restart=True)
        # The learners' placement group reserves its bundles until removed: without this, every graph built in
        # a long-lived driver (tests, notebooks) leaks CPUs/GPUs until nothing schedules.
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(graph.placement_group)


def run_on_graph(cfg: RlptConfig, graph: Graph, prep: PreparedRun, run_dir: Path, on_step: StepCallback | None,
                 state: LoopState | None = None, ckpt: Path | None = None) -> None:
    """The loop on a built graph (after restoring `ckpt` when resuming). A lost learner rank ends the run with an
    error that says which rank, and which checkpoint to resume from."""
    try:
        if state is not None and ckpt is not None:
            graph.workers.learner.load_state(ckpt / "state")
            graph.workers.sync.sync(state.policy_version)  # engines (and a syncing reference) take the weights
            truncate_metrics(run_dir / "metrics.jsonl", state.next_step)
        kind = algorithm_of(cfg).loop(cfg)
        extra = {"eval_prompts": prep.eval_prompts} if kind is LoopKind.ONLINE else {}  # rlpt.prepare checks
        loop_of(cfg)(cfg, graph.workers, prep.prompts, run_dir, prep.facts.pad_id, on_step, state, **extra)
    except LearnerRankLost as e:
        raise LearnerRankLost(f"{e}. {resume_hint(run_dir)}") from None


def loop_of(cfg: RlptConfig) -> Callable[..., None]:
    """The loop this config runs: its algorithm's loop kind; K = rollout.max_staleness = 0 is the synchronous
    loop itself (not an asynchronous one with a bound of 0)."""
    return (ASYNC_LOOPS if cfg.rollout.max_staleness else LOOPS)[algorithm_of(cfg).loop(cfg)]


def resume_hint(run_dir: Path) -> str:
    try:
        ckpt = latest_checkpoint(run_dir)
    except FileNotFoundError:
        return ("No checkpoint was written yet (run.checkpoint_every sets how often); the run must "
                "start over")
    return f"The last checkpoint, {ckpt}, is complete: continue with `rlpt train --resume {run_dir}`"


def train(cfg: RlptConfig, run_dir: Path, on_step: StepCallback | None = None, resume: bool = False,
          from_step: int | None = None, prep: PreparedRun | None = None, ray_s: float | None = None) -> float:
    """Run the configured loop end to end (or continue it from the latest / a given checkpoint); returns wall
    seconds. Actors are torn down even on errors. The preflight runs first (here, or by the caller, which passes
    its `prep`): a setup that cannot work fails before Ray is even imported. `ray_s`: the caller started (or
    connected to) Ray for this run (placement.init_ray_while_importing, in that many seconds), and this shuts it
    down at the end."""
    start = time.perf_counter()
    state, ckpt = None, None
    if resume:
        ckpt = latest_checkpoint(run_dir, from_step)
        state = LoopState.read(ckpt / "loop_state.json")
    if prep is None:
        prep = prepare(cfg, run_dir)
    import ray

    started_ray = ray_s is not None or not ray.is_initialized()
    graph = None
    try:
        t = time.perf_counter()
        graph = build_graph(cfg, prep, ray_s=ray_s)
        slowest = sorted(graph.ready_s.items(), key=lambda kv: -kv[1])[:3]
        event(f"actors up in {time.perf_counter() - t:.1f}s (Ray {graph.ray_s:.1f}s; slowest "
              f"{', '.join(f'{k} {v:.1f}s' for k, v in slowest)}): {cfg.learner.num_ranks} learner rank(s), "
              f"{len(graph.pool.workers)} engine(s), {len(graph.verifier_pool.workers)} verifier(s)"
              f"{', a reference' if graph.reference is not None else ''}"
              f"{''.join(f', reward {n}: {len(p.workers)} actor(s)' for n, p in graph.reward_pools.items())}"
              f"{'' if graph.env_pool is None else f', {len(graph.env_pool.workers)} environment actor(s)'}"
              f"; torch threads "
              f"{', '.join(f'{k} {v}' for k, v in graph.threads.items())}"
              f"{'; actor logs in ' + str(run_dir / 'logs') if cfg.run.log_level == 'quiet' else ''}")
        run_on_graph(cfg, graph, prep, run_dir, on_step, state, ckpt)
    finally:
        t = time.perf_counter()
        shutdown(graph)
        if started_ray:
            placement.shutdown_ray()
        event(f"shut down in {time.perf_counter() - t:.1f}s")
    return time.perf_counter() - start

