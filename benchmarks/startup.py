"""Start-up and shutdown of `rlpt train`: one-step runs of the side-by-side benchmark's tiny workload
(benchmarks/vs_trl: the same model, prompts, verifier and overrides), timed from outside, spawn to exit. Each console
line is stamped as it arrives, so the table splits the wall time at the run's own events: preflight done, actors
up (the loop starts right after), shut down (the last line), exit.

    .venv/bin/python benchmarks/startup.py [--before DIR] [--rounds 3] [--engines hf vllm]   # nothing else running
    .venv/bin/python benchmarks/startup.py --smoke        # one hf run, prints only

`--before DIR` also runs another tree's code (e.g. `git archive <commit> | tar -x -C DIR`) with the same venv;
each round runs every (code, engine) once, the order of the codes alternating by round. A full run writes its
table to the "Start-up and shutdown" section of benchmarks/RESULTS.md (`--out`); a smoke run leaves it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
VS_TRL = ROOT / "benchmarks" / "vs_trl"
sys.path.insert(0, str(VS_TRL))

from harness import rlpt_command, run_env  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

HEADING = "## Start-up and shutdown"
EVENTS = {"preflight": re.compile(r"\[rlpt\] preflight "), "actors up": re.compile(r"\[rlpt\] actors up in "),
          "shut down": re.compile(r"\[rlpt\] shut down in ")}
RAY_S = re.compile(r"\(Ray ([0-9.]+)s")
SHUTDOWN_S = re.compile(r"\[rlpt\] shut down in ([0-9.]+)s")


@dataclass(frozen=True)
class Timed:
    code: str
    engine: str
    wall_s: float
    at: dict[str, float]  # seconds since spawn at which each event line arrived
    ray_s: float  # the actors-up line's "Ray" seconds
    step_s: float  # the step's own timing/step
    shutdown_s: float  # the shut-down line's seconds


def run_once(code: str, tree: Path, engine: str, assets: Path, out: Path) -> Timed:
    """One 1-step run of `tree`'s rlpt (cwd and PYTHONPATH point at it, so the actors import it too)."""
    run_dir = out / f"{code}-{engine}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = rlpt_command(WORKLOADS["tiny"], assets, 1, 0, run_dir, [f"rollout.engine={engine}"])
    env = run_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tree), env["PYTHONPATH"]])
    at: dict[str, float] = {}
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            for name, pattern in EVENTS.items():
                if pattern.search(line):
                    at.setdefault(name, time.perf_counter() - t0)

    reader = threading.Thread(target=read)
    reader.start()
    proc.wait(timeout=600)
    wall = time.perf_counter() - t0
    reader.join()
    if proc.returncode != 0 or set(at) != set(EVENTS):
        raise RuntimeError(f"{code} {engine}: exit {proc.returncode}, events {sorted(at)}:\n{''.join(lines)[-3000:]}")
    text = "".join(lines)
    ray, shutdown = RAY_S.search(text), SHUTDOWN_S.search(text)
    step_s = float(json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["timing/step"])
    return Timed(code, engine, wall, at, float(ray.group(1)) if ray else float("nan"), step_s,
                 float(shutdown.group(1)) if shutdown else float("nan"))


COLUMNS = ("wall s", "until preflight done s", "until actors up s", "of which Ray s", "step s", "shut down s",
           "exit after shut down s", "outside the step s")


def figures(t: Timed) -> dict[str, float]:
    shutdown_line = t.at["shut down"]
    return {"wall s": t.wall_s, "until preflight done s": t.at["preflight"], "until actors up s": t.at["actors up"],
            "of which Ray s": t.ray_s, "step s": t.step_s, "shut down s": t.shutdown_s,
            "exit after shut down s": t.wall_s - shutdown_line, "outside the step s": t.wall_s - t.step_s}


def table(runs: Sequence[Timed]) -> str:
    lines = ["| code | engine | runs | " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---|" * len(COLUMNS)]
    keys = sorted({(r.code, r.engine) for r in runs}, key=lambda k: (k[1], k[0] != "before"))
    for code, engine in keys:
        mine = [figures(r) for r in runs if (r.code, r.engine) == (code, engine)]
        cells = " | ".join(f"{statistics.median(m[c] for m in mine):.2f}" for c in COLUMNS)
        lines.append(f"| {code} | {engine} | {len(mine)} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="another tree's code (run with this venv) for the before rows")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rlpt-startup"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--smoke", action="store_true", help="one hf run of this tree; prints the table only")
    args = ap.parse_args(argv)
    rounds, engines = (1, ["hf"]) if args.smoke else (args.rounds, args.engines)
    assets = args.work / "assets"
    subprocess.run([sys.executable, str(VS_TRL / "assets.py"), "--out", str(assets), "--workloads", "tiny"],
                   check=True, cwd=ROOT, capture_output=True)
    codes = [("after", ROOT)] + ([("before", args.before.resolve())] if args.before and not args.smoke else [])
    runs = []
    for r in range(rounds):
        for code, tree in (codes if r % 2 == 0 else codes[::-1]):
            for engine in engines:
                runs.append(run_once(code, tree, engine, assets, args.work / "runs"))
                f = figures(runs[-1])
                print(f"[startup] round {r} {code} {engine}: wall {f['wall s']:.1f}s, outside the step "
                      f"{f['outside the step s']:.1f}s", flush=True)
    tab = table(runs)
    print(tab)
    if args.smoke:
        return
    cmd = ".venv/bin/python benchmarks/startup.py " + " ".join(argv or sys.argv[1:])
    section = (f"{HEADING}\n\nCommand: `{cmd}` ({time.strftime('%Y-%m-%d')}, this machine kind: 2 cores, shared). "
               f"One-step runs of the vs_trl tiny workload (its model, prompts, verifier and overrides) with "
               f"`rollout.engine` as listed, medians over the rounds. Times from outside: spawn to the arrival of "
               f"each event line; \"of which Ray\" and \"shut down\": the seconds those event lines print; "
               f"\"exit after shut down\" = the process's exit minus the arrival of the `shut down` line; "
               f"\"outside the step\" = wall minus the step (the issue's start-up + shutdown).\n\n{tab}\n")
    from data_rows import write_section  # noqa: E402  (benchmarks/data_rows.py: one helper for every section)

    write_section(args.out, HEADING, section)
    print(f"[startup] wrote the section {HEADING!r} of {args.out}")


if __name__ == "__main__":
    main()
