"""Verify overhead: N trivial rollouts (the tiny arith task's shape: 8 samples per prompt, 3-token answers, verifier
`numeric`) scored in-process, through `rlpt.isolation.IsolatedScorer` (the killable child process) and through the
Ray `VerifierPool` with one actor. Prints the median seconds per batch over `--reps` repetitions and the overhead:
that median minus the in-process median (what isolation and Ray add to the verifier's own work).

    flock /tmp/rlpt-heavy.lock .venv/bin/python benchmarks/verify_overhead.py [--before DIR] [--reps 200] [--rounds 3]
    .venv/bin/python benchmarks/verify_overhead.py --smoke      # a few reps, no Ray, prints only

`--before DIR` also measures the same paths with the code of another tree (e.g. `git archive <commit>` unpacked
into DIR), so one command gives the before and after rows; each round runs in a fresh process, before and after
alternating. A full run writes its table to the "Verify overhead" section of benchmarks/RESULTS.md (`--out`); a
smoke run leaves that file alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]


def make_rollouts(n: int, group: int = 8) -> list[Any]:
    """n rollouts of n/group arith prompts; every other sample is right. The samples of a prompt share its Prompt
    object, as the rollout actors' results do."""
    from rlpt.types import Prompt, Rollout

    out = []
    for p in range(-(-n // group)):
        a, b = p % 7, p % 5
        prompt = Prompt(uid=f"arith-0-{p}", text=f"{a}+{b}=", answer=str(a + b),
                        meta={"task": "arith", "operands": [a, b], "ops": ["+"]}, prompt_ids=(3, 4, 5, 6))
        for i in range(group):
            text = str(a + b if i % 2 == 0 else a + b + 1)
            out.append(Rollout(prompt, i, (7, 8, 2), (-0.5, -0.25, -0.125), text, "stop", 0, "rollout-0"))
    return out[:n]


def median_s(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(n: int, reps: int, with_ray: bool, code: str, code_root: Path) -> list[dict[str, Any]]:
    """One row per path: median seconds per batch of n rollouts."""
    from rlpt.isolation import IsolatedScorer
    from rlpt.scoring import score_rollout
    from rlpt.verifiers import load_verifier

    rollouts = make_rollouts(n)
    verify = load_verifier("numeric")
    rows = [{"code": code, "path": "in-process", "n": n,
             "median_s": median_s(lambda: [score_rollout(verify, r, 0.0) for r in rollouts], reps)}]
    with IsolatedScorer("numeric", timeout_s=10.0, error_reward=0.0) as scorer:
        rows.append({"code": code, "path": "IsolatedScorer", "n": n,
                     "median_s": median_s(lambda: scorer.score(rollouts), reps)})
    if with_ray:
        rows.append({"code": code, "path": "VerifierPool (1 Ray actor)", "n": n,
                     "median_s": ray_median_s(rollouts, reps, code_root)})
    for row in rows:
        row["overhead_ms"] = (row["median_s"] - rows[0]["median_s"]) * 1e3
    return rows


def ray_median_s(rollouts: Sequence[Any], reps: int, code_root: Path) -> float:
    import ray

    from actors.verifier import VerifierPool, VerifierWorker

    # The actor imports rlpt and actors from the same tree as this process (PYTHONPATH beats the editable install).
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(code_root), "RAY_USAGE_STATS_ENABLED": "0"}})
    try:
        where = ray.get(ray.remote(_module_file).remote("actors.verifier"))
        if not where.startswith(str(code_root)):
            raise RuntimeError(f"the Ray workers import actors.verifier from {where}, not from {code_root}")
        worker = ray.remote(VerifierWorker).options(num_cpus=1).remote("verifier-0", "numeric", 10.0, 0.0)
        ray.get(worker.ping.remote())
        pool = VerifierPool([worker], ["verifier-0"], per_item_timeout_s=10.0)
        return median_s(lambda: pool.score(rollouts), reps, warmup=5)
    finally:
        ray.shutdown()


def _module_file(name: str) -> str:
    import importlib

    return str(importlib.import_module(name).__file__)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (code, path): the median over rounds of each round's median, and the rounds' overhead range."""
    lines = ["| code | path | rollouts | median ms per batch | overhead ms (minus in-process) "
             "| overhead us per rollout | overhead ms, each round |", "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["code"], r["path"]) for r in rows))
    for code, path in keys:
        mine = [r for r in rows if (r["code"], r["path"]) == (code, path)]
        batch_ms = statistics.median(r["median_s"] for r in mine) * 1e3
        overhead = statistics.median(r["overhead_ms"] for r in mine)
        each = ", ".join(f"{r['overhead_ms']:.2f}" for r in mine)
        lines.append(f"| {code} | {path} | {mine[0]['n']} | {batch_ms:.2f} | {overhead:.2f} | "
                     f"{overhead * 1e3 / mine[0]['n']:.1f} | {each} |")
    return "\n".join(lines)


def run_tree(tree: Path, label: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One round of measurements with a tree's rlpt/actors, in a fresh interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--code-root", str(tree), "--label", label, "--json-only",
           "--n", str(args.n), "--reps", str(args.reps), *([] if args.ray else ["--no-ray"])]
    # cwd = the tree: Ray puts the driver's working directory on its workers' sys.path ahead of PYTHONPATH.
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tree)
    if res.returncode != 0:
        raise RuntimeError(f"measuring {tree} failed:\n{res.stderr[-3000:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="alternating before/after rounds, each in a fresh process")
    ap.add_argument("--smoke", action="store_true", help="5 reps, 1 round, no Ray, RESULTS.md untouched")
    ap.add_argument("--no-ray", dest="ray", action="store_false")
    ap.add_argument("--before", type=Path, help="a tree with the old code, measured too (see the docstring)")
    ap.add_argument("--code-root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--label", default="after", help=argparse.SUPPRESS)
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = ap.parse_args()
    if args.smoke:
        args.reps, args.rounds, args.ray = 5, 1, False
    if args.json_only:  # one round, in this process
        code_root = args.code_root.resolve()
        sys.path.insert(0, str(code_root))  # before the editable install of this tree: --before measures another
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        for row in measure(args.n, args.reps, args.ray, args.label, code_root):
            print(json.dumps(row), flush=True)
        return
    rows: list[dict[str, Any]] = []
    for _ in range(args.rounds):  # alternating, so drifting load from other work hits both sides alike
        if args.before:
            rows += run_tree(args.before, "before", args)
        rows += run_tree(ROOT, "after", args)
    rows.sort(key=lambda r: r["code"] != "before")  # stable: before rows first, rounds in order
    for row in rows:
        print(json.dumps(row), flush=True)
    print(table(rows))
    if not args.smoke:
        before = f" --before {args.before}" if args.before else ""
        section = (f"## Verify overhead\n\nCommand: `flock /tmp/rlpt-heavy.lock .venv/bin/python "
                   f"benchmarks/verify_overhead.py{before} --reps {args.reps} --rounds {args.rounds}` "
                   f"({time.strftime('%Y-%m-%d')}, this machine kind: 2 cores shared with other work; per round the "
                   f"median over {args.reps} batches, in a fresh process; rounds alternate before/after)\n\n"
                   f"{table(rows)}\n")
        write_section(args.out, "## Verify overhead", section)


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace (or append) the section that starts with `heading` in RESULTS.md, leaving the others as they are."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nFigures measured on this machine kind.\n"
    parts = text.split("\n## ")
    kept = [p for p in parts if not ("## " + p).startswith(heading)]
    path.write_text("\n## ".join(kept).rstrip() + "\n\n" + section)


if __name__ == "__main__":
    main()
