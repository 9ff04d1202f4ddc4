"""Composition root: config -> actors -> `LOOPS[cfg.algorithm.name](cfg, workers, ...)`.

Everything Ray-specific about building the graph is here; the loops only see rlpt.loops.common.Workers.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from actors import placement
from actors.calls import ActorCallTimeout, gather, settle
from actors.fleet import Fleet
from actors.learner import LearnerGroup, LearnerRank, LearnerRankLost
from actors.reference import ReferenceActor
from actors.rollout import RolloutPool, RolloutWorker, engine_options
from actors.verifier import VerifierPool, VerifierWorker
from actors.weight_sync import EngineSync, GroupSpec, SyncGroupError, resolve_backend
from rlpt.batching import learner_layout, pair_layout
from rlpt.config import RlptConfig, save_config
from rlpt.data import load_prompts, tokenize_prompts
from rlpt.loops import dpo, online, rft
from rlpt.loops.common import LoopState, StepCallback, Workers, latest_checkpoint, total_steps
from rlpt.metrics import truncate_metrics
from rlpt.models import load_tokenizer, resolve_model_path
from rlpt.types import Prompt

LOOPS: dict[str, Callable[..., None]] = {
    "grpo": online.run,
    "nft": online.run,
    "rft": rft.run,  # online mode delegates to online.run; rounds mode is its own loop
    "dpo": dpo.run,
}


def needs_reference(cfg: RlptConfig) -> bool:
    return cfg.algorithm.name == "dpo" or (cfg.algorithm.name == "grpo" and cfg.algorithm.grpo.beta > 0)


def reference_syncs(cfg: RlptConfig) -> bool:
    """DPO with `reference: previous` moves the reference to each round's policy through the sync group."""
    return cfg.algorithm.name == "dpo" and cfg.algorithm.dpo.reference == "previous"


class RemoteReference:
    """ReferenceService over one ReferenceActor."""

    def __init__(self, actor: Any, timeout_s: float) -> None:
        self.actor, self.timeout_s = actor, timeout_s

    def logprobs(self, input_ids_B_T: torch.Tensor, attention_mask_B_T: torch.Tensor) -> torch.Tensor:
        import ray

        return ray.get(self.actor.logprobs.remote(input_ids_B_T, attention_mask_B_T), timeout=self.timeout_s)


@dataclass
class Graph:
    workers: Workers
    learner_ranks: list[Any]
    pool: RolloutPool
    verifier_pool: VerifierPool
    reference: Any | None
    sync: EngineSync
    placement_group: Any
    fleet: Fleet

    @property
    def engines(self) -> list[Any]:
        return self.pool.workers

    def actors(self) -> list[Any]:
        return [*self.learner_ranks, *self.pool.workers, *self.verifier_pool.workers,
                *([self.reference] if self.reference else []), *self.fleet.shutdown()]


def _wait_all(what: str, refs: list[Any], labels: Sequence[str], timeout_s: float) -> list[Any]:
    return gather(what, refs, labels, timeout_s)


def form_sync_group(cfg: RlptConfig, rank0: Any, host: str, members: list[Any], names: list[str], generation: int
                    ) -> None:
    """(Re-)form the weight-sync group: learner rank 0 + every member (all TP workers of each engine)."""
    import ray

    port = ray.get(rank0.open_sync_group.remote(host), timeout=cfg.run.actor_timeout_s)
    tp = cfg.rollout.tensor_parallel_size
    labels, bases, nxt = ["learner rank 0"], [], 1
    for m, name in zip(members, names):
        width = 1 if name == "reference" else tp
        labels += [f"{name} (tp {t})" if width > 1 else name for t in range(width)]
        bases.append(nxt)
        nxt += width
    spec = GroupSpec(name=f"weights-{generation}", host=host, port=port, backend=resolve_backend(cfg.sync.backend),
                     timeout_s=cfg.sync.timeout_s, labels=tuple(labels))
    joins = [rank0.join_sync_group.remote(spec)] + [m.join_sync.remote(spec, b) for m, b in zip(members, bases)]
    try:
        _wait_all("weight-sync group", joins, ["learner rank 0", *names], cfg.sync.timeout_s + 30)
    except ActorCallTimeout as e:
        raise SyncGroupError(str(e)) from None


def build_graph(cfg: RlptConfig, model_path: Path, tokenizer: Any, prompts: Sequence[Prompt],
                request_resources: Callable[[list[dict[str, float]]], None] | None = None) -> Graph:
    """`request_resources` is how the fleet talks to the autoscaler (default: ray.autoscaler.sdk.request_resources);
    tests pass a stand-in that adds and removes simulated nodes."""
    import ray

    placement.init_ray(cfg)
    T = cfg.run.actor_timeout_s
    K, N, M = cfg.learner.num_ranks, cfg.rollout.num_workers, cfg.verifier.num_workers
    # Start everything at once: engine and DeepSpeed start-up dominate and overlap.
    pg = placement.learner_placement_group(cfg, T)
    ranks = [ray.remote(LearnerRank).options(**placement.learner_options(cfg, pg, k)).remote(k, K, cfg, str(model_path))
             for k in range(K)]
    opts = engine_options(cfg, str(model_path))

    def make_engine(name: str) -> Any:
        return ray.remote(RolloutWorker).options(**placement.engine_options(cfg)).remote(name, opts, str(model_path))

    def make_verifier(name: str) -> Any:
        return ray.remote(VerifierWorker).options(**placement.cpu_actor_options()).remote(
            name, cfg.verifier.name, cfg.verifier.timeout_s, cfg.verifier.error_reward)

    names, vnames = [f"rollout-{i}" for i in range(N)], [f"verifier-{i}" for i in range(M)]
    engines, verifiers = [make_engine(n) for n in names], [make_verifier(n) for n in vnames]
    reference = None
    if needs_reference(cfg):
        reference = ray.remote(ReferenceActor).options(**placement.reference_options(cfg)).remote(
            str(model_path), cfg.model.dtype, cfg.rollout.temperature, cfg.learner.micro_batch_size)
    if cfg.algorithm.name == "dpo":
        layout = pair_layout(cfg.algorithm.dpo.prompts_per_round, cfg.learner)
    else:
        layout = learner_layout(cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt, cfg.learner)
    total = total_steps(cfg) * layout.mini_batches * max(cfg.learner.ppo_epochs, cfg.algorithm.dpo.epochs,
                                                         cfg.algorithm.rft.epochs)
    addr, port = ray.get(ranks[0].address.remote(), timeout=T)
    setups = [r.setup.remote(addr, port, layout.micro, layout.micro_per_rank, total) for r in ranks]
    _wait_all("start-up", setups + [e.ping.remote() for e in engines] + [v.ping.remote() for v in verifiers],
              [f"learner rank {k}" for k in range(K)] + names + vnames, T)
    learner = LearnerGroup(ranks, layout, cfg, tokenizer.pad_token_id, T)
    plan = learner.sync_plan()
    pool = RolloutPool(engines, names, T, max_restarts=cfg.rollout.max_restarts)
    fleet = Fleet(cfg, pool, make_engine, T, request_resources)
    extras = [reference] if reference is not None and reference_syncs(cfg) else []

    def members() -> tuple[list[Any], list[str]]:
        return [*pool.workers, *extras], [*pool.names, *(["reference"] if extras else [])]

    generation = [0]

    def reform() -> None:
        generation[0] += 1
        form_sync_group(cfg, ranks[0], addr, *members(), generation[0])

    def before_sync() -> None:
        if fleet.update():  # engines left or joined: re-form the group with them, only ever between collectives
            reform()

    def recover_sync(send: list[Any], receive: list[Any]) -> list[str]:
        """After a failed sync: the engines that died in it (replaced, group re-formed), or [] when none did."""
        names_before = list(pool.names)
        if not settle(send, cfg.sync.timeout_s + 30):
            return []  # a learner rank died or hangs: not an engine fault (the sync error stands)
        ray.get(ranks[0].leave_sync_group.remote(), timeout=T)  # frees members still blocked in the broken group
        settle(receive, cfg.sync.timeout_s + 30)  # their "connection closed" errors: expected, consumed here
        fleet.update(autoscale=False)  # drop the dead, start and admit replacements (blocks below cluster.rollout.min)
        lost = [name for name in names_before if name not in pool.names]
        if lost:
            reform()
        return lost

    form_sync_group(cfg, ranks[0], addr, *members(), 0)
    probe_ids = list(prompts[0].prompt_ids) + tokenizer(" 12 34 the answer", add_special_tokens=False)["input_ids"]
    syncer = EngineSync(learner, members, plan, probe_ids, cfg.sync.probe_tolerance, cfg.sync.timeout_s + 30,
                        before_sync, recover_sync)
    vpool = VerifierPool(verifiers, vnames, cfg.verifier.timeout_s, factory=make_verifier,
                         max_restarts=cfg.verifier.max_restarts)
    workers = Workers(rollout=pool, verifier=vpool, learner=learner, sync=syncer,
                      reference=None if reference is None else RemoteReference(reference, T))
    return Graph(workers, ranks, pool, vpool, reference, syncer, pg, fleet)


def shutdown(graph: Graph | None) -> None:
    import ray

    if graph is not None:
        for actor in graph.actors():
            ray.kill(actor, no_restart=True)
        # The learners' placement group reserves its bundles until removed: without this, every graph built in
        # a long-lived driver (tests, notebooks) leaks CPUs/GPUs until nothing schedules.
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(graph.placement_group)


@dataclass(frozen=True)
class PreparedRun:
    model_path: Path
    tokenizer: Any
    prompts: list[Prompt]
    skipped_too_long: int


def prepare(cfg: RlptConfig, run_dir: Path) -> PreparedRun:
    """Library-only preparation (no Ray): run directory, resolved config, model, tokenized prompts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    model_path = resolve_model_path(cfg)
    tok = load_tokenizer(cfg.model.tokenizer_path or model_path)
    loaded = load_prompts(cfg.data, cfg.run.seed)
    tokenized = tokenize_prompts(loaded, tok, cfg.data)
    report = {"prompts": len(loaded), "kept": len(tokenized.prompts),
              "skipped_too_long": len(tokenized.skipped_too_long), "max_prompt_tokens": cfg.data.max_prompt_tokens,
              "skipped_uids": tokenized.skipped_too_long[:100]}
    (run_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    if tokenized.skipped_too_long:
        print(f"[rlpt] skipped {len(tokenized.skipped_too_long)} of {len(loaded)} prompts longer than "
              f"data.max_prompt_tokens={cfg.data.max_prompt_tokens} (see {run_dir / 'data_report.json'})",
              file=sys.stderr)
    return PreparedRun(model_path, tok, tokenized.prompts, len(tokenized.skipped_too_long))


def run_on_graph(cfg: RlptConfig, graph: Graph, prep: PreparedRun, run_dir: Path, on_step: StepCallback | None,
                 state: LoopState | None = None, ckpt: Path | None = None) -> None:
    """The loop on a built graph (after restoring `ckpt` when resuming). A lost learner rank ends the run with an
    error that says which rank, and which checkpoint to resume from."""
    try:
        if state is not None and ckpt is not None:
            graph.workers.learner.load_state(ckpt / "state")
            graph.workers.sync.sync(state.policy_version)  # engines (and a syncing reference) take the weights
            truncate_metrics(run_dir / "metrics.jsonl", state.next_step)
        LOOPS[cfg.algorithm.name](cfg, graph.workers, prep.prompts, run_dir, prep.tokenizer.pad_token_id, on_step,
                                  state)
    except LearnerRankLost as e:
        raise LearnerRankLost(f"{e}. {resume_hint(run_dir)}") from None


def resume_hint(run_dir: Path) -> str:
    try:
        ckpt = latest_checkpoint(run_dir)
    except FileNotFoundError:
        return ("No checkpoint was written yet (run.checkpoint_every sets how often); the run must "
                "start over")
    return f"The last checkpoint, {ckpt}, is complete: continue with `rlpt train --resume {run_dir}`"


def train(cfg: RlptConfig, run_dir: Path, on_step: StepCallback | None = None, resume: bool = False,
          from_step: int | None = None) -> float:
    """Run the configured loop end to end (or continue it from the latest / a given checkpoint); returns wall
    seconds. Actors are torn down even on errors."""
    import ray

    start = time.perf_counter()
    state, ckpt = None, None
    if resume:
        ckpt = latest_checkpoint(run_dir, from_step)
        state = LoopState.read(ckpt / "loop_state.json")
    prep = prepare(cfg, run_dir)
    started_ray = not ray.is_initialized()
    graph = None
    try:
        graph = build_graph(cfg, prep.model_path, prep.tokenizer, prep.prompts)
        run_on_graph(cfg, graph, prep, run_dir, on_step, state, ckpt)
    finally:
        shutdown(graph)
        if started_ray:
            ray.shutdown()
    return time.perf_counter() - start
