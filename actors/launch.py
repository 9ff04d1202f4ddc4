"""Composition root: config -> actors -> `LOOPS[cfg.algorithm.name](cfg, workers, ...)`.

Everything Ray-specific about building the graph is here; the loops only see rlpt.loops.common.Workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from actors import placement
from actors.learner import LearnerGroup, LearnerRank
from actors.reference import ReferenceActor
from actors.rollout import RolloutPool, RolloutWorker, engine_options
from actors.verifier import VerifierPool, VerifierWorker
from actors.weight_sync import EngineSync, GroupSpec, SyncGroupError, resolve_backend
from rlpt.batching import learner_layout, pair_layout
from rlpt.config import RlptConfig, save_config
from rlpt.data import load_prompts, tokenize_prompts
from rlpt.loops import dpo, online, rft
from rlpt.loops.common import StepCallback, Workers, total_steps
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
    engines: list[Any]
    engine_names: list[str]
    verifiers: list[Any]
    reference: Any | None
    sync: EngineSync
    placement_group: Any

    def actors(self) -> list[Any]:
        return [*self.learner_ranks, *self.engines, *self.verifiers, *([self.reference] if self.reference else [])]


def _wait_all(what: str, refs: list[Any], labels: Sequence[str], timeout_s: float) -> list[Any]:
    import ray

    _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        raise TimeoutError(f"{what}: {', '.join(labels[refs.index(r)] for r in pending)} not ready in {timeout_s}s")
    return ray.get(refs)


def build_graph(cfg: RlptConfig, model_path: Path, tokenizer: Any, prompts: Sequence[Prompt]) -> Graph:
    import ray

    placement.init_ray(cfg)
    T = cfg.run.actor_timeout_s
    K, N, M = cfg.learner.num_ranks, cfg.rollout.num_workers, cfg.verifier.num_workers
    # Start everything at once: engine and DeepSpeed start-up dominate and overlap.
    pg = placement.learner_placement_group(cfg, T)
    ranks = [ray.remote(LearnerRank).options(**placement.learner_options(cfg, pg, k)).remote(k, K, cfg, str(model_path))
             for k in range(K)]
    names = [f"rollout-{i}" for i in range(N)]
    opts = engine_options(cfg, str(model_path))
    engines = [ray.remote(RolloutWorker).options(**placement.engine_options(cfg)).remote(n, opts, str(model_path))
               for n in names]
    vnames = [f"verifier-{i}" for i in range(M)]
    verifiers = [ray.remote(VerifierWorker).options(**placement.cpu_actor_options()).remote(
        n, cfg.verifier.name, cfg.verifier.timeout_s, cfg.verifier.error_reward) for n in vnames]
    reference = None
    if needs_reference(cfg):
        reference = ray.remote(ReferenceActor).options(**placement.engine_options(cfg)).remote(
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
    sync_port = ray.get(ranks[0].open_sync_group.remote(addr), timeout=T)
    tp = cfg.rollout.tensor_parallel_size
    labels = ["learner rank 0", *(f"{n} (tp {t})" if tp > 1 else n for n in names for t in range(tp))]
    members, member_names = list(engines), list(names)
    if reference is not None and reference_syncs(cfg):
        labels.append("reference")
        members.append(reference)
        member_names.append("reference")
    spec = GroupSpec(name="weights-0", host=addr, port=sync_port, backend=resolve_backend(cfg.sync.backend),
                     timeout_s=cfg.sync.timeout_s, labels=tuple(labels))
    joins = [ranks[0].join_sync_group.remote(spec)] + [
        m.join_sync.remote(spec, 1 + i * tp) for i, m in enumerate(members)]
    try:
        _wait_all("weight-sync group", joins, ["learner rank 0", *member_names], cfg.sync.timeout_s + 30)
    except TimeoutError as e:
        raise SyncGroupError(str(e)) from None
    probe_ids = list(prompts[0].prompt_ids) + tokenizer(" 12 34 the answer", add_special_tokens=False)["input_ids"]
    syncer = EngineSync(learner, members, member_names, plan, probe_ids, cfg.sync.probe_tolerance,
                        cfg.sync.timeout_s + 30)
    workers = Workers(
        rollout=RolloutPool(engines, names, T), verifier=VerifierPool(verifiers, vnames, cfg.verifier.timeout_s),
        learner=learner, sync=syncer, reference=None if reference is None else RemoteReference(reference, T))
    return Graph(workers, ranks, engines, names, verifiers, reference, syncer, pg)


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
    tokenized = tokenize_prompts(load_prompts(cfg.data, cfg.run.seed), tok, cfg.data)
    return PreparedRun(model_path, tok, tokenized.prompts, len(tokenized.skipped_too_long))


def train(cfg: RlptConfig, run_dir: Path, on_step: StepCallback | None = None) -> float:
    """Run the configured loop end to end; returns wall seconds. Actors are torn down even on errors."""
    import ray

    start = time.perf_counter()
    prep = prepare(cfg, run_dir)
    started_ray = not ray.is_initialized()
    graph = None
    try:
        graph = build_graph(cfg, prep.model_path, prep.tokenizer, prep.prompts)
        LOOPS[cfg.algorithm.name](cfg, graph.workers, prep.prompts, run_dir, prep.tokenizer.pad_token_id, on_step)
    finally:
        shutdown(graph)
        if started_ray:
            ray.shutdown()
    return time.perf_counter() - start
