"""Where actors run: Ray init (local cluster sized so every actor schedules, or an existing cluster) and per-role
resource options. On GPU clusters learner ranks share a placement group (PACK: same node when possible, so their
collectives stay on NVLink); engines get `gpus_per_engine * tensor_parallel_size` GPUs each. With
`cluster.colocate: true` engines and learners may share GPUs (fractional GPU requests, e.g. 0.5 each); vLLM's
`gpu_memory_utilization` must then leave room for the learner.
"""

from __future__ import annotations

import math
import os
import subprocess
from types import ModuleType
from typing import Any

from rlpt.algorithms import algorithm_of
from rlpt.config import RlptConfig
from rlpt.errors import RunFault


class PlacementTimeout(RunFault, TimeoutError):
    """The cluster cannot place the learner ranks (not enough of the resources they ask for)."""


# Environment every rlpt actor needs, wherever it is scheduled (also on an existing cluster).
ACTOR_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def needed_cpus(cfg: RlptConfig) -> int:
    """Logical CPUs for a local cluster: one per actor plus one spare (over-subscription of real cores is fine;
    an actor that cannot be scheduled would leave its gloo peers waiting)."""
    ref = 1 if algorithm_of(cfg).needs_reference(cfg) else 0
    rewards = sum(math.ceil(getattr(t, "num_cpus", 1) * (t.max_workers or t.num_workers)) for t in cfg.reward.terms)
    envs = cfg.environment.num_workers if cfg.environment.enabled else 0
    return cfg.learner.num_ranks + cfg.fleet_bounds()[1] + cfg.verifier.num_workers + rewards + envs + ref + 1


def init_ray(cfg: RlptConfig) -> str:
    """Connect to the cluster of the Ray job we run in, or to `cluster.address` / RAY_ADDRESS, or start a local
    cluster bound to cluster.dashboard_host."""
    import json

    import ray

    if ray.is_initialized():
        return "existing"
    env = {"env_vars": {k: os.environ.get(k, v) for k, v in ACTOR_ENV.items()}}
    job_config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor for a job's driver
    if job_config is not None:
        # Inside a Ray job (`rlpt submit`, `ray job submit`): always the job's own cluster. The job's runtime_env
        # (working_dir on sys.path, env_vars) already reaches every actor, and ray.init refuses a runtime_env that
        # sets one of the job's env vars again: add only the ones the job does not set.
        job_env = (json.loads(job_config).get("runtime_env") or {}).get("env_vars") or {}
        env["env_vars"] = {k: v for k, v in env["env_vars"].items() if k not in job_env}
        ray.init(address="auto", runtime_env=env if env["env_vars"] else None, **console_options(cfg))
        return "job"
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=env, **console_options(cfg))
        return address
    # Local cluster: plug-ins (`verifier.name: my_mod:fn`) import from where rlpt runs, as they would in-process.
    env["env_vars"]["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    # The raylet would prestart one plain worker per CPU for this driver; every rlpt actor has a runtime_env (its
    # thread count), so none could use them: ~0.3 s of CPU each during start-up, for nothing.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    # address="local": a new cluster of our own even when another one runs on this machine (a `ray start` head, a
    # test's simulated cluster): without it ray.init attaches to that one and refuses num_cpus.
    ray.init(address="local", num_cpus=cfg.cluster.num_cpus or needed_cpus(cfg), resources=local_custom_resources(cfg),
             include_dashboard=cfg.cluster.dashboard, dashboard_host=cfg.cluster.dashboard_host, runtime_env=env,
             **console_options(cfg))
    return "local"


def init_ray_while_importing(cfg: RlptConfig, module: str) -> tuple[float | None, ModuleType]:
    """`init_ray` on this thread while `module` (the actor stack: torch, the loops) is imported on another; returns
    Ray's seconds (None when Ray was already initialised in this process: not ours to end) and the module. Ray's
    start is mostly waiting for its own processes, the import is CPU work of this process, so the two overlap
    (~0.5-1 s of a run's start-up on 2 cores). Ray starts on the calling thread because the processes it starts die
    with the thread that started them. If the import fails, a Ray this call started is shut down before the error
    propagates."""
    import importlib
    import time
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="rlpt-import") as pool:
        imported = pool.submit(importlib.import_module, module)
        start = time.monotonic()
        how = init_ray(cfg)
        seconds = time.monotonic() - start
        try:
            return (None if how == "existing" else seconds), imported.result()
        except BaseException:
            if how != "existing":  # ours to end: a Ray the caller had already initialised stays up
                shutdown_ray()
            raise


def shutdown_ray() -> None:
    """`ray.shutdown()`, less the second it spends on the autoscaler monitor of a cluster this process started.
    Ray ends its node's processes one after another, each with SIGTERM and up to 1 s to exit before SIGKILL; the
    monitor (Ray's autoscaler: nothing to scale on a local cluster of fixed size, no state to save) is ended after
    the GCS it reports to, so it always uses that whole second (1.35 s -> 0.35 s measured here). It gets SIGKILL
    first, as it would after the second. A connected cluster (`cluster.address`, a Ray job) starts no processes of
    this one: there this is ray.shutdown()."""
    import ray

    try:  # private API: if a Ray upgrade moves it, the plain shutdown below still ends everything
        from ray._private import ray_constants
        from ray._private.worker import _global_node as node

        monitors = node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node and node.head else []
    except (ImportError, AttributeError):
        monitors = []
    for info in monitors:
        if info.process.poll() is None:
            info.process.kill()
            try:
                info.process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # stuck in the kernel (D state): ray.shutdown below still runs
                pass
    ray.shutdown()


def console_options(cfg: RlptConfig) -> dict[str, Any]:
    """ray.init options for the console: with run.log_level quiet, no actor output streamed to the driver (it is in
    <run dir>/logs/) and only Ray's errors (its INFO and WARNING lines, e.g. the token-auth notice, stay in Ray's
    session log files)."""
    import logging

    verbose = cfg.run.log_level == "verbose"
    return {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}


def local_custom_resources(cfg: RlptConfig) -> dict[str, float]:
    """A local cluster is every node type at once: it offers the custom resources the config pins roles with
    (`cluster.learner_resources`, `cluster.engine_resources`, reward terms' `resources`), enough for every learner
    rank, the largest fleet and every reward actor,
    so a GPU recipe written for cluster/ node types also runs on one machine."""
    out: dict[str, float] = {}
    model_terms = [(dict(getattr(t, "resources", {})), t.max_workers or t.num_workers) for t in cfg.reward.terms]
    for per, count in ((cfg.cluster.learner_resources, cfg.learner.num_ranks),
                       (cfg.cluster.engine_resources, cfg.fleet_bounds()[1]), *model_terms):
        for name, amount in per.items():
            out[name] = out.get(name, 0.0) + amount * count
    return out


def learner_options(cfg: RlptConfig, pg: Any, rank: int) -> dict[str, Any]:
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"num_cpus": 1, "num_gpus": cfg.cluster.gpus_per_learner, "resources": dict(cfg.cluster.learner_resources),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank)}


def learner_placement_group(cfg: RlptConfig, timeout_s: float) -> Any:
    import ray
    from ray.util.placement_group import placement_group

    bundle = {"CPU": 1, **({"GPU": cfg.cluster.gpus_per_learner} if cfg.cluster.gpus_per_learner else {}),
              **cfg.cluster.learner_resources}
    pg = placement_group([dict(bundle) for _ in range(cfg.learner.num_ranks)], strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        raise PlacementTimeout(f"learner placement group ({cfg.learner.num_ranks} x {bundle}) not schedulable within "
                           f"{timeout_s}s: does the cluster have these resources?")
    return pg


def engine_options(cfg: RlptConfig) -> dict[str, Any]:
    tp = cfg.rollout.tensor_parallel_size
    return {"num_cpus": 1, "num_gpus": cfg.cluster.gpus_per_engine * tp,
            "resources": dict(cfg.cluster.engine_resources)}


def reference_options(cfg: RlptConfig) -> dict[str, Any]:
    """The frozen reference model: an engine's GPU share, but not the rollout node type (it is not elastic)."""
    return {"num_cpus": 1, "num_gpus": cfg.cluster.gpus_per_engine}


def engine_bundle(cfg: RlptConfig) -> dict[str, float]:
    """The resources one rollout engine needs, as a bundle for `ray.autoscaler.sdk.request_resources`."""
    opts = engine_options(cfg)
    return {"CPU": float(opts["num_cpus"]), **({"GPU": float(opts["num_gpus"])} if opts["num_gpus"] else {}),
            **opts["resources"]}


def actor_threads(cfg: RlptConfig, reserved_cpus: float = 1.0) -> int:
    """torch/OpenMP threads for a learner rank, engine or reference actor (`cluster.threads_per_actor`). Ray sets
    OMP_NUM_THREADS to an actor's num_cpus when unset, so a num_cpus=1 actor would compute on one core: on 2 cores
    that made a 26M-param model's learner step 1.6x and its generation 1.3x slower. On one node the synchronous
    loop gives each actor every core (its phases run one after another); the asynchronous loop splits them between
    the engines and the learner ranks, which run at the same time. Call after ray.init."""
    if cfg.cluster.threads_per_actor != "auto":
        return int(cfg.cluster.threads_per_actor)
    import ray

    if sum(1 for n in ray.nodes() if n.get("Alive")) == 1:
        cores = len(os.sched_getaffinity(0))  # one node: the driver's cores are the node's
        if cfg.rollout.max_staleness:
            # Asynchronous: engines and learner ranks compute at the same time; with every core each, their
            # OpenMP threads fight over the cores (measured on 2 cores: generation 4x, training 3.5x slower).
            return max(1, cores // (cfg.rollout.num_workers + cfg.learner.num_ranks))
        return cores
    return max(1, int(reserved_cpus))


def thread_env(threads: int) -> dict[str, Any]:
    """The per-actor runtime_env that sets its threads (merged with the job's env vars by Ray). OMP_NUM_THREADS is
    read when torch starts, so it also reaches the engine before vLLM locks torch.set_num_threads on CPU."""
    return {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}}


def cpu_actor_options() -> dict[str, Any]:
    return {"num_cpus": 1}


def reward_options(term: Any) -> dict[str, Any]:
    """A reward-model or judge actor: the term's own CPUs, GPUs and node-type resources (rlpt.config._ModelTerm)."""
    return {"num_cpus": term.num_cpus, "num_gpus": term.num_gpus, "resources": dict(term.resources)}
