"""What the end of a step costs the driver (rlpt.loops.common.end_step): writing the step's rollouts file (128
rollouts), its metrics row (JSONL + fsync + TensorBoard) and, with --checkpoint, a checkpoint of the default tiny
model on real actors (learner save_hf + save_state, the part that stays on the step path).

    .venv/bin/python benchmarks/step_writes.py [--before DIR] [--steps 60]   # end_step with in-process fakes
    flock /tmp/rlpt-heavy.lock .venv/bin/python benchmarks/step_writes.py --checkpoint [--steps 6]
    .venv/bin/python benchmarks/step_writes.py --smoke                       # 5 steps, prints only

Between two end_step calls the script sleeps 50 ms (the driver waits on actors there, releasing the GIL), so a
background writer has the time it has in a real run. `--before DIR` first measures another tree's code (e.g.
`git archive <commit>` unpacked into DIR) in a subprocess. Full runs write their tables to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Step bookkeeping off the critical path"
CHECKPOINT_SECTION = "## Checkpoint cost (tiny model)"


class _Health:
    def metrics(self) -> dict[str, float]:
        return {"fleet/size": 1.0, "faults/rollout_restarts": 0.0, "faults/verifier_restarts": 0.0}


def step_scored(step: int, n: int = 128, group: int = 8) -> list[Any]:
    from rlpt.types import Prompt, Rollout, ScoredRollout

    out = []
    for p in range(n // group):
        prompt = Prompt(uid=f"arith-0-{step * 16 + p}", text=f"{p}+{step % 9}=", answer=str(p + step % 9),
                        prompt_ids=(3, 4, 5, 6))
        for i in range(group):
            ro = Rollout(prompt, i, (7, 8, 2), (-0.5, -0.25, -0.125), str(p + i % 2), "stop", step, "rollout-0")
            out.append(ScoredRollout(ro, float(i % 2 == 0), i % 2 == 0, {"pred": float(p)}))
    return out


def measure_end_step(steps: int, code: str) -> dict[str, Any]:
    """Seconds of one end_step call (no checkpoint due; the first call, which imports pyarrow, is not counted) and
    of the final close (what was still queued)."""
    from rlpt.config import load_config
    from rlpt.loops.common import LoopRun, StepEnd, Workers, end_step, rollout_metrics
    from rlpt.metrics import MetricsWriter, PhaseTimer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"run.root={tmp}", "run.checkpoint_every=0"])
        workers = Workers(rollout=None, verifier=None, learner=None, sync=None, health=_Health())  # type: ignore
        times, timer = [], PhaseTimer()
        writer = MetricsWriter(Path(tmp), tensorboard=True)
        run = LoopRun(cfg, workers, Path(tmp), steps + 2, writer, timer)  # total > steps: no final checkpoint
        for step in range(steps + 1):
            scored = step_scored(step)
            metrics = {**rollout_metrics(scored, step), "actor/loss": 0.1, "actor/grad_norm": 1.0,
                       "actor/entropy": 2.0, "logprob_gap/mean": 1e-6, "logprob_gap/max": 1e-5, "actor/lr": 1e-3,
                       "sync/probe_max_abs_diff": 1e-6, "sync/retries": 0.0}
            t0 = time.perf_counter()
            end_step(run, StepEnd(step, step + 1, True, metrics, scored, t0, {"epoch": 0, "pos": step}))
            times.append(time.perf_counter() - t0)
            time.sleep(0.05)
        t = time.perf_counter()
        writer.close()
        close_s = time.perf_counter() - t
        assert len((Path(tmp) / "metrics.jsonl").read_text().splitlines()) == steps + 1
        assert len(list((Path(tmp) / "rollouts").glob("step_*.parquet"))) == steps + 1
    times = times[1:]
    return {"code": code, "what": "end_step (rollouts file + metrics row)", "steps": steps,
            "median_ms": statistics.median(times) * 1e3, "p90_ms": statistics.quantiles(times, n=10)[-1] * 1e3,
            "close_ms": close_s * 1e3}


def measure_checkpoint(steps: int) -> dict[str, Any]:
    """A real tiny run with a checkpoint after every step: the checkpoint time each step, then save_hf and
    save_state timed on their own (5 times each) on the trained learner."""
    from actors.launch import build_graph, prepare, run_on_graph, shutdown
    from rlpt.config import load_config
    from rlpt.metrics import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"run.root={tmp}", "run.name=ck", f"run.steps={steps}", "run.checkpoint_every=1"])
        run_dir = Path(tmp) / "ck"
        prep = prepare(cfg, run_dir)
        graph = build_graph(cfg, prep)
        try:
            run_on_graph(cfg, graph, prep, run_dir, None)
            learner = graph.workers.learner
            split: dict[str, list[float]] = {"save_hf": [], "save_state": []}
            for k in range(5):
                out = Path(tmp) / f"extra{k}"
                out.mkdir()
                for name, save, where in (("save_hf", learner.save_hf, out),
                                          ("save_state", learner.save_state, out / "state")):
                    t = time.perf_counter()
                    save(where)
                    split[name].append(time.perf_counter() - t)
        finally:
            shutdown(graph)
        rows = read_metrics(run_dir / "metrics.jsonl")
        size = sum(f.stat().st_size for f in (run_dir / "checkpoints").rglob("*") if f.is_file()) / 2**20
    return {"checkpoint_ms": [round(r["timing/checkpoint"] * 1e3, 1) for r in rows],
            "step_ms": [round(r["timing/step"] * 1e3) for r in rows], "checkpoint_mb": round(size, 2),
            "save_hf_median_ms": statistics.median(split["save_hf"]) * 1e3,
            "save_state_median_ms": statistics.median(split["save_state"]) * 1e3}


def run_before(tree: Path, steps: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--code-root", str(tree), "--label", "before",
           "--json-only", "--steps", str(steps)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")][-1]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| code | what | steps | median ms on the step path | p90 ms | close ms (queued writes flushed) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['code']} | {r['what']} | {r['steps']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
              f"{r['close_ms']:.2f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--checkpoint", action="store_true", help="real actors (heavy: run under the shared lock)")
    ap.add_argument("--before", type=Path)
    ap.add_argument("--code-root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--label", default="after", help=argparse.SUPPRESS)
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(args.code_root.resolve()))  # before the editable install: --before measures another tree
    if args.checkpoint:
        result = measure_checkpoint(args.steps)
        print(json.dumps(result), flush=True)
        section = (f"{CHECKPOINT_SECTION}\n\nCommand: `flock /tmp/rlpt-heavy.lock .venv/bin/python "
                   f"benchmarks/step_writes.py --checkpoint --steps {args.steps}` ({time.strftime('%Y-%m-%d')}, "
                   f"default config: tiny model, 1 learner rank, a checkpoint after every step)\n\n"
                   f"| checkpoint ms per step | step ms | checkpoint MB on disk (retention 3) | save_hf median ms | "
                   f"save_state median ms |\n|---|---|---|---|---|\n"
                   f"| {result['checkpoint_ms']} | {result['step_ms']} | "
                   f"{result['checkpoint_mb']} | {result['save_hf_median_ms']:.0f} | "
                   f"{result['save_state_median_ms']:.0f} |\n")
        write_section(args.out, CHECKPOINT_SECTION, section)
        return
    steps = 5 if args.smoke else args.steps
    rows = [run_before(args.before, steps)] if args.before else []
    rows.append(measure_end_step(steps, args.label))
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.json_only:
        return
    print(table(rows))
    if not args.smoke:
        before = f" --before {args.before}" if args.before else ""
        section = (f"{SECTION}\n\nCommand: `flock /tmp/rlpt-heavy.lock .venv/bin/python benchmarks/step_writes.py"
                   f"{before} --steps {steps}` ({time.strftime('%Y-%m-%d')}, this machine kind: 2 cores shared "
                   f"with other work)\n\n{table(rows)}\n")
        write_section(args.out, SECTION, section)


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace (or append) the section that starts with `heading` in RESULTS.md, leaving the others as they are."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nFigures measured on this machine kind.\n"
    parts = text.split("\n## ")
    kept = [p for p in parts if not ("## " + p).startswith(heading)]
    path.write_text("\n## ".join(kept).rstrip() + "\n\n" + section)


if __name__ == "__main__":
    main()
