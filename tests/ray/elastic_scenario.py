"""Elastic-fleet scenarios on a multi-node Ray cluster simulated on this machine (`ray.cluster_utils.Cluster`: a
real GCS and one real raylet per "node"). Run by tests/ray/test_elastic.py in a subprocess, because each scenario
needs a cluster of its own and the test session already holds one:

    python -m tests.ray.elastic_scenario nodes OUT_DIR

Writes OUT_DIR/summary.json (the events, the live engines at the end and their versions); the run directory holds
metrics.jsonl and rollouts/ as usual.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


HEAD = {"num_cpus": 4, "include_dashboard": False}  # learner, verifier, reference, spare
ROLLOUT_NODE = {"num_cpus": 1, "resources": {"rlpt_rollout": 1}}


def _connect(cluster) -> None:
    import ray

    from actors.placement import ACTOR_ENV

    env = {k: os.environ.get(k, v) for k, v in ACTOR_ENV.items()}
    env["PYTHONPATH"] = os.getcwd()
    env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
    ray.init(address=cluster.address, runtime_env={"env_vars": env}, log_to_driver=False)


def nodes(out: Path, name: str = "elastic", extra: tuple[str, ...] = ()) -> None:
    """One rollout node at the start; a second node is added after step 2 (its engine must join at the current
    version and take work); three steps after it joined, the first node is removed while a step is generating
    (its lost work must be re-issued, nothing lost or doubled); the run goes on with the remaining engine.
    `extra` overrides, e.g. rollout.max_staleness=1 (`nodes_async`: the producer generates while the learner
    trains; fleet changes happen in the sync, under the engines lock)."""
    import ray
    from ray.cluster_utils import Cluster

    from actors.launch import build_graph, prepare, run_on_graph, shutdown
    from rlpt.config import load_config

    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    node_a = cluster.add_node(**ROLLOUT_NODE)
    _connect(cluster)
    run_dir = out / name
    cfg = load_config(None, [f"run.root={out}", f"run.name={name}", "run.steps=16", "run.tensorboard=false",
                             "cluster.engine_resources={rlpt_rollout: 1}", "cluster.rollout.max=2",
                             "cluster.rollout.join_timeout_s=180", "cluster.threads_per_actor=1",
                             "sync.probe_every=1", *extra])
    prep = prepare(cfg, run_dir)
    graph = build_graph(cfg, prep)
    events: list[dict] = []
    state = {"joined_at": None, "remover": None, "last_step": -1}

    def on_step(step: int, m: dict) -> None:
        state["last_step"] = step
        size = int(m["fleet/size"])
        if step == 2:
            cluster.add_node(**ROLLOUT_NODE)
            events.append({"event": "node_added", "after_step": step})
            # the engine asked for at start-up (fleet max = 2) now schedules there; wait until its vLLM is up so it
            # joins at the next step boundary (on a real cluster the run simply goes on meanwhile)
            ready, _ = ray.wait([p.ready for p in graph.fleet.pending], num_returns=1, timeout=180)
            events.append({"event": "engine_ready", "ok": bool(ready)})
        if size == 2 and state["joined_at"] is None:
            state["joined_at"] = step
        if state["joined_at"] is not None and step == state["joined_at"] + 3:
            engine_a = graph.fleet.pool.workers[graph.fleet.pool.names.index("rollout-0")]

            def remove() -> None:
                time.sleep(0.05)  # let the next step start generating
                cluster.remove_node(node_a, allow_graceful=False)
                events.append({"event": "node_gone", "last_step_done": state["last_step"]})
                # The engine's process outlives its raylet by a while that varies with load (seconds: a varying
                # number of these short steps). Record where the run was when a call to it first failed, so the
                # test bounds rlpt's reaction (the engine leaves within a step or two), not the process's end.
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        ray.get(engine_a.ping.remote(), timeout=10)
                    except ray.exceptions.RayActorError:
                        break
                    except ray.exceptions.GetTimeoutError:
                        continue  # busy or going: ask again
                    time.sleep(0.1)
                events.append({"event": "engine_unreachable", "last_step_done": state["last_step"]})
            state["remover"] = threading.Thread(target=remove)
            state["remover"].start()
            events.append({"event": "node_removed", "after_step": step})

    try:
        run_on_graph(cfg, graph, prep, run_dir, on_step)
        if state["remover"] is not None:
            state["remover"].join()
        live = list(graph.pool.names)
        versions = ray.get([w.get_version.remote() for w in graph.pool.workers], timeout=60)
    finally:
        shutdown(graph)
    summary = {"events": events, "live_engines": live, "live_versions": versions}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    ray.shutdown()
    cluster.shutdown()


class StandInAutoscaler:
    """Plays the Ray autoscaler for a `Cluster` (which has none): the fleet's resource requests (N engine bundles)
    go to the real `ray.autoscaler.sdk.request_resources` AND are recorded here; `reconcile()` (called between
    steps) adds a missing node, or removes an idle rollout node (no engine on it) the request no longer needs."""

    def __init__(self, cluster) -> None:
        self.cluster, self.nodes, self.requests, self.log = cluster, [], [], []
        self.in_run = False
        self.lock = threading.Lock()

    def __call__(self, bundles: list[dict[str, float]]) -> None:
        from actors.fleet import _request_resources

        _request_resources(bundles)  # what a real cluster's autoscaler reads
        self.requests.append(len(bundles))

    def reconcile(self) -> None:
        """Act on the latest request (from the main thread, between steps: Ray starts nodes only there)."""
        if self.requests:
            self._reconcile(self.requests[-1])

    def _reconcile(self, want: int) -> None:
        from ray._private.state import available_resources_per_node

        with self.lock:
            while len(self.nodes) < want:
                self.nodes.append(self.cluster.add_node(**ROLLOUT_NODE))
                self.log.append({"event": "node_added", "nodes": len(self.nodes), "during_run": self.in_run})
            while len(self.nodes) > want:
                free = available_resources_per_node()
                idle = [n for n in self.nodes if free.get(n.node_id, {}).get("rlpt_rollout", 0) >= 1]
                if not idle:
                    break  # every node still hosts an engine (a real autoscaler also waits for idle nodes)
                self.cluster.remove_node(idle[-1])
                self.nodes.remove(idle[-1])
                self.log.append({"event": "node_removed", "nodes": len(self.nodes), "during_run": self.in_run})


def autoscale(out: Path) -> None:
    """Two runs on one simulated cluster whose rollout nodes come and go only through the fleet's requests.
    Run 1 is rollout-bound against a low target share: the policy asks for a second engine, the stand-in autoscaler
    adds a node, the engine joins. Run 2 starts with two engines against a high target share (engines idle):
    the policy retires one and lowers its request, and the now idle node is removed."""
    import ray
    from ray.cluster_utils import Cluster

    from actors.launch import build_graph, prepare, run_on_graph, shutdown
    from rlpt.config import load_config

    cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    _connect(cluster)
    scaler = StandInAutoscaler(cluster)
    summary: dict = {}
    for run, (workers, share, steps) in {"up": (1, 0.15, 14), "down": (2, 0.9, 8)}.items():
        cfg = load_config(None, [f"run.root={out}", f"run.name=autoscale-{run}", f"run.steps={steps}",
                                 "run.tensorboard=false", "cluster.engine_resources={rlpt_rollout: 1}",
                                 f"rollout.num_workers={workers}", "cluster.rollout.min=1", "cluster.rollout.max=2",
                                 "cluster.rollout.autoscale=true", f"cluster.rollout.target_wait_share={share}",
                                 "cluster.rollout.band=0.05", "cluster.rollout.cooldown_steps=2",
                                 "cluster.rollout.join_timeout_s=180"])
        scaler([{"CPU": 1.0, "rlpt_rollout": 1.0}] * workers)  # the nodes the run starts on
        scaler._reconcile(workers)
        prep = prepare(cfg, out / f"autoscale-{run}")
        graph = build_graph(cfg, prep, request_resources=scaler)

        def on_step(step: int, m: dict, graph=graph) -> None:
            scaler.reconcile()
            if graph.fleet.pending:  # wait for a requested engine to be up, so it joins at the next boundary
                ray.wait([p.ready for p in graph.fleet.pending], num_returns=1, timeout=180)

        scaler.in_run = True
        try:
            run_on_graph(cfg, graph, prep, out / f"autoscale-{run}", on_step)
            live = list(graph.pool.names)
        finally:
            scaler.in_run = False
            shutdown(graph)
        time.sleep(1.0)
        scaler.reconcile()  # an idle node is removed once no engine holds it
        summary[run] = {"live_engines": live, "requests": list(scaler.requests), "nodes": len(scaler.nodes),
                        "log": list(scaler.log)}
        scaler.requests.clear()
        scaler.log.clear()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    ray.shutdown()
    cluster.shutdown()


def nodes_async(out: Path) -> None:
    nodes(out, "elastic-async", ("rollout.max_staleness=1",))


SCENARIOS = {"nodes": nodes, "nodes_async": nodes_async, "autoscale": autoscale}

if __name__ == "__main__":
    name, out_dir = sys.argv[1], Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    SCENARIOS[name](out_dir)
