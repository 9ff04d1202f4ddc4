"""Rollout workers: each owns one engine; a RolloutPool spreads prompt groups over them dynamically.

Engines (`rollout.engine`, the explicit `ENGINES` dict): `VllmEngine` (default) and `HfEngine` (actors/hf_engine.py,
rlpt's own decoding loop over a transformers model, for small models). `VllmEngine` is the thin adapter and the only
code that imports vllm: a vLLM upgrade touches this file (and the worker extension) only. It runs in-process (no
engine subprocess) when tensor_parallel_size == 1, which is both the CPU path and the single-GPU path; TP > 1 uses
vLLM's multiprocess executor, the extension running in each TP worker.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from actors.calls import first_line
from actors.hf_engine import HfEngine
from actors.startup import freeze_imported_heap, no_gc_while_starting
from actors.weight_sync import GroupSpec
from rlpt.config import RlptConfig
from rlpt.errors import RunFault
from rlpt.models import decode_completion
from rlpt.types import Prompt, Rollout, SamplingSpec
from rlpt.weights import SyncPlan


@dataclass(frozen=True)
class EngineOptions:
    model_path: str
    dtype: str
    seed: int
    max_model_len: int
    eos_ids: tuple[int, ...] = ()  # every EOS id the model declares (rlpt.preflight): each stops generation
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    cpu_kv_cache_gib: int = 1
    logprobs_mode: str = "raw_logprobs"  # "processed_logprobs" when temperature != 1 (matches the learner's T)
    engine: str = "vllm"  # a key of ENGINES (rollout.engine)


def engine_options(cfg: RlptConfig, model_path: str, max_model_len: int, eos_ids: tuple[int, ...]) -> EngineOptions:
    """`max_model_len` and `eos_ids` come from the preflight (rlpt.preflight.RunShape / ModelFacts)."""
    r = cfg.rollout
    return EngineOptions(
        engine=r.engine, model_path=model_path, dtype=cfg.model.dtype, seed=cfg.run.seed, max_model_len=max_model_len,
        eos_ids=tuple(eos_ids),
        tensor_parallel_size=r.tensor_parallel_size, gpu_memory_utilization=r.gpu_memory_utilization,
        cpu_kv_cache_gib=r.cpu_kv_cache_gib,
        logprobs_mode="raw_logprobs" if r.temperature == 1.0 else "processed_logprobs",
    )


class VllmEngine:
    """The adapter over vllm.LLM: generate with sampled-token logprobs, probe logprobs, weight-sync hooks."""

    def __init__(self, opts: EngineOptions) -> None:
        self.stop_token_ids = list(opts.eos_ids) or None
        in_process = opts.tensor_parallel_size == 1
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(opts.cpu_kv_cache_gib))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        import torch._dynamo
        from vllm import LLM

        if in_process:  # TP > 1: vLLM builds in spawned workers that never see this process's heap
            freeze_imported_heap()  # before LLM(...): its own five gc.collect() calls then skip the imports' heap

        # The model runs eagerly (enforce_eager below); vLLM's sampler still wraps a helper in torch.compile (the
        # rank of each sampled token's logprob, an exact integer count), which costs the first generate ~2 s of
        # inductor compilation on CPU. Eager, it is the same count; in this process only vLLM compiles.
        torch._dynamo.config.disable = True

        self.llm = LLM(
            model=opts.model_path, tokenizer=opts.model_path, dtype=opts.dtype, seed=opts.seed,
            enforce_eager=True, max_model_len=opts.max_model_len, enable_prefix_caching=False,
            tensor_parallel_size=opts.tensor_parallel_size, gpu_memory_utilization=opts.gpu_memory_utilization,
            distributed_executor_backend="uni" if in_process else "mp", logprobs_mode=opts.logprobs_mode,
            worker_extension_cls="actors.vllm_worker.RlptWorkerExtension",
        )

    def generate(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], spec: SamplingSpec) -> list[Any]:
        from vllm import SamplingParams

        params = [
            SamplingParams(n=spec.n, max_tokens=spec.max_tokens, temperature=spec.temperature, top_p=spec.top_p,
                           top_k=spec.top_k if spec.top_k > 0 else 0, stop=list(spec.stop) or None,
                           stop_token_ids=self.stop_token_ids, logprobs=0, seed=seed, detokenize=bool(spec.stop))
            for seed in seeds
        ]
        outs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
        return [[(list(c.token_ids), [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)], c.finish_reason)
                 for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]

    def prompt_logprobs(self, ids: Sequence[int]) -> list[float]:
        """log p(ids[t] | ids[<t]) for t >= 1 (the sync probe)."""
        from vllm import SamplingParams

        out = self.llm.generate([{"prompt_token_ids": list(ids)}],
                                SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False), use_tqdm=False)[0]
        return [d[t].logprob for t, d in zip(ids[1:], out.prompt_logprobs[1:])]

    def join_sync(self, spec: GroupSpec, rank_base: int) -> list[int]:
        return self.llm.collective_rpc("rlpt_join_sync", args=(spec, rank_base))

    def receive_weights(self, plan: SyncPlan, version: int) -> None:
        # No reset_prefix_cache: prefix caching is off (enable_prefix_caching=False above), so no KV of the old
        # weights is kept between requests (the reset only logged a line per sync).
        self.llm.collective_rpc("rlpt_receive", args=(plan, version))


ENGINES: dict[str, Callable[[EngineOptions], Any]] = {"vllm": VllmEngine, "hf": HfEngine}


class RolloutWorker:
    """Ray actor body (wrapped with ray.remote by actors/launch.py): one engine plus its policy version."""

    def __init__(self, name: str, opts: EngineOptions, tokenizer_path: str, log_dir: str | None = None) -> None:
        from actors.logs import redirect_output
        from rlpt.models import load_tokenizer

        redirect_output(log_dir, name)
        self.name, self.eos_ids = name, frozenset(opts.eos_ids)
        with no_gc_while_starting():
            self.engine = ENGINES[opts.engine](opts)
            self.tokenizer = load_tokenizer(tokenizer_path)
        self.policy_version = 0
        self.unloaded: str | None = None  # why the engine's weights are not a whole version (a failed receive)

    def _whole_weights(self) -> None:
        """A receive that failed part-way leaves a mix of two versions in the engine; in the asynchronous loop
        the driver learns of it only at the next sync (EngineSync.hand_off), so this engine refuses to serve."""
        if self.unloaded is not None:
            raise RuntimeError(f"{self.name}: its weights are not a whole version ({self.unloaded}); the next "
                               f"successful sync restores them")

    def decode(self, ids: Sequence[int]) -> str:
        return decode_completion(self.tokenizer, ids, self.eos_ids)

    def ping(self) -> str:
        return self.name

    def threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def generate(self, prompts: Sequence[Prompt], seeds: Sequence[int], spec: SamplingSpec,
                 prefix_lens: Sequence[int] | None = None) -> tuple[list[Rollout], float]:
        """The chunk's rollouts, and the seconds spent inside the engine's generate (the rest of the pool's wall
        time is Ray, pickling and this adapter: `timing/rollout` - `timing/rollout_engine`). A continuation
        (partial rollouts) ends its prompt ids with the `prefix_lens[j]` response tokens sampled so far: the text is
        decoded from those plus the new ones (decoding pieces apart would lose e.g. a SentencePiece leading
        space); the ids and logprobs returned are the new ones only."""
        self._whole_weights()
        start = time.perf_counter()
        outs = self.engine.generate([p.prompt_ids for p in prompts], seeds, spec)
        engine_s = time.perf_counter() - start
        prefixes = [tuple(p.prompt_ids[len(p.prompt_ids) - n:]) if n else () for p, n in
                    zip(prompts, prefix_lens or [0] * len(prompts))]
        return [
            Rollout(prompt=p, sample_index=i, response_ids_T=tuple(ids), logprobs_T=tuple(lps),
                    text=self.decode(prefix + tuple(ids)), finish_reason=str(reason),
                    policy_version=self.policy_version, engine=self.name)
            for p, prefix, samples in zip(prompts, prefixes, outs) for i, (ids, lps, reason) in enumerate(samples)
        ], engine_s

    def probe(self, ids: Sequence[int]) -> list[float]:
        self._whole_weights()
        return self.engine.prompt_logprobs(ids)

    def join_sync(self, spec: GroupSpec, rank_base: int) -> list[int]:
        return self.engine.join_sync(spec, rank_base)

    def receive_weights(self, plan: SyncPlan, version: int) -> float:
        start = time.perf_counter()
        try:
            self.engine.receive_weights(plan, version)
        except BaseException as e:
            self.unloaded = f"loading v{version} failed: {first_line(e)}"
            raise
        self.policy_version, self.unloaded = version, None
        return time.perf_counter() - start

    def get_version(self) -> int:
        return self.policy_version


class RolloutTimeout(RunFault, TimeoutError):
    pass


class RolloutWorkerLost(RunFault):
    """Rollout engines died beyond what the pool may replace (`rollout.max_restarts`), or none is left."""


class RolloutPool:
    """Driver-side fan-out over N rollout workers. Prompts go out in small chunks, a new chunk to whichever worker
    finishes first, so a slow worker holds up at most one chunk.

    Faults: when an engine dies, its in-flight chunk goes back to the queue and is served by the live engines, so
    every prompt is generated exactly once. Membership (dropping dead engines, admitting new ones) changes only
    between steps, through actors.fleet.Fleet, called before the sync so a new engine holds the current weights
    and version before it serves.
    """

    def __init__(self, workers: Sequence[Any], names: Sequence[str], timeout_s: float, chunks_per_worker: int = 2):
        self.workers, self.names = list(workers), list(names)
        self.timeout_s, self.chunks_per_worker = timeout_s, chunks_per_worker
        self.dead: set[int] = set()
        self.answered: set[int] = set()  # engines that returned a chunk since the last check_alive: alive then
        self.busy_s = 0.0  # wall time inside generate() since the fleet last looked (its autoscaling signal) ...
        self.window_start: float | None = None  # ... and when the first generate() after that look started
        self.engine_s: dict[str, float] = {}  # seconds inside each engine's own generate since the last step end

    def take_busy_seconds(self) -> tuple[float, float]:
        """(seconds inside generate, seconds since the first generate) since the last call; then reset. The span
        starts at the step's first generation, so time between steps (sync, checkpoints, callbacks) is not counted
        as rollout-idle time."""
        now = time.perf_counter()
        busy, span = self.busy_s, (0.0 if self.window_start is None else now - self.window_start)
        self.busy_s, self.window_start = 0.0, None
        return busy, span

    def take_engine_metrics(self) -> dict[str, float]:
        """`timing/rollout_engine`: the busiest engine's seconds inside vLLM's generate this step (absent when
        nothing was generated); then reset."""
        busiest = max(self.engine_s.values(), default=None)
        self.engine_s = {}
        return {} if busiest is None else {"timing/rollout_engine": busiest}

    def add(self, worker: Any, name: str) -> None:
        """Admit an engine (between steps, once it holds the current weights or is about to get them)."""
        self.workers.append(worker)
        self.names.append(name)

    def remove(self, indices: Sequence[int]) -> None:
        """Forget engines (dead or retired) between steps."""
        drop = set(indices)
        self.workers = [w for i, w in enumerate(self.workers) if i not in drop]
        self.names = [n for i, n in enumerate(self.names) if i not in drop]
        self.dead, self.answered = set(), set()

    def generate(self, prompts: Sequence[Prompt], seeds: Sequence[int], spec: SamplingSpec,
                 account: bool = True, on_chunk: Callable[[int, list[Rollout]], None] | None = None,
                 prefix_lens: Sequence[int] | None = None) -> list[Rollout]:
        """The rollouts of these prompts, in order. `account=False` (evaluation) leaves the autoscaler's busy time
        and `timing/rollout_engine` to training's generation. `on_chunk(first prompt index, rollouts)` is called
        as each chunk comes back (the asynchronous loop scores it while the engines go on: streaming
        verification); a chunk lost with its engine is reported once, by the engine that generates it again.
        `prefix_lens`: continuations of partial rollouts (RolloutWorker.generate)."""
        start, saved = time.perf_counter(), dict(self.engine_s)
        if account and self.window_start is None:
            self.window_start = start
        try:
            return self._generate(prompts, seeds, spec, on_chunk, prefix_lens)
        finally:
            if account:
                self.busy_s += time.perf_counter() - start
            else:
                self.engine_s = saved

    def _generate(self, prompts: Sequence[Prompt], seeds: Sequence[int], spec: SamplingSpec,
                  on_chunk: Callable[[int, list[Rollout]], None] | None, prefix_lens: Sequence[int] | None
                  ) -> list[Rollout]:
        import ray
        from ray.exceptions import RayActorError

        live = [w for w in range(len(self.workers)) if w not in self.dead]
        # Several chunks per engine balance the load between engines; one engine takes the whole request at once
        # (each chunk pays the engine's fixed cost per generate call).
        chunks = len(live) * self.chunks_per_worker if len(live) > 1 else 1
        size = max(1, math.ceil(len(prompts) / chunks))
        todo = [(i, prompts[i:i + size], seeds[i:i + size]) for i in range(0, len(prompts), size)]
        todo.reverse()
        results: dict[int, list[Rollout]] = {}
        pending: dict[Any, tuple[int, int, Any, Any]] = {}  # ref -> (chunk start, worker, prompts, seeds)
        idle = live
        while todo or pending:
            while todo and idle:
                w = idle.pop()
                start, ps, ss = todo.pop()
                prefix = None if prefix_lens is None else list(prefix_lens[start:start + len(ps)])
                pending[self.workers[w].generate.remote(ps, ss, spec, prefix)] = (start, w, ps, ss)
            if not pending:
                raise RolloutWorkerLost(f"rollout: every engine is dead ({', '.join(self.names)})")
            done, _ = ray.wait(list(pending), num_returns=1, timeout=self.timeout_s)
            if not done:
                busy = ", ".join(self.names[w] for _, w, _, _ in pending.values())
                raise RolloutTimeout(f"rollout: no chunk finished within {self.timeout_s}s (busy: {busy})")
            start, w, ps, ss = pending.pop(done[0])
            try:
                results[start], engine_s = ray.get(done[0])
                self.engine_s[self.names[w]] = self.engine_s.get(self.names[w], 0.0) + engine_s
            except RayActorError as e:
                self.dead.add(w)
                todo.append((start, ps, ss))  # re-issue: the lost chunk produced nothing we kept
                print(f"[rlpt] {self.names[w]} died during generation ({type(e).__name__}); re-issuing its "
                      f"{len(ps)} prompts to the live engines", file=sys.stderr)
                continue
            idle.append(w)
            self.answered.add(w)
            if on_chunk is not None:
                on_chunk(start, results[start])
        return [r for start in sorted(results) for r in results[start]]

    def check_alive(self, timeout_s: float) -> set[int]:
        """Ping the engines that returned no chunk since the last check (idle ones, or joined since) and mark the
        ones that are gone. An engine that just returned one is not pinged (a round trip each step for nothing);
        if it died since, its sync fails and EngineSync's repair replaces it (as for a death inside the sync)."""
        import ray
        from ray.exceptions import RayActorError

        answered, self.answered = self.answered, set()
        pings = {w: worker.ping.remote() for w, worker in enumerate(self.workers)
                 if w not in self.dead and w not in answered}
        for w, ref in pings.items():  # all in flight at once: one round trip per step, not one per engine
            try:
                ray.get(ref, timeout=timeout_s)
            except RayActorError:
                self.dead.add(w)
                print(f"[rlpt] {self.names[w]} is gone (noticed before the sync)", file=sys.stderr)
        return set(self.dead)
