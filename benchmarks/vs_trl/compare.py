"""rlpt side by side with TRL: build the shared assets, set up TRL (pinned, own venv), run both systems on both
workloads with identical settings, interleaved, and print one table of medians and ratios (rlpt / TRL).

    .venv/bin/python benchmarks/vs_trl/compare.py                      # the full benchmark (~25 min on 2 cores)
    .venv/bin/python benchmarks/vs_trl/compare.py --workloads tiny --steps tiny=3 --rounds 1   # a smoke run
    ... --lock /tmp/rlpt-heavy.lock --results benchmarks/RESULTS.md     # lock per run; write the section

Definitions (the same for both systems; times from outside, see harness.py):
- step: wall time between the arrivals of two consecutive step records; the first step (warm-up) and the last
  (rlpt writes its final checkpoint in it) are not measured. Phases are each system's own timers; "other" is the
  step minus its phases. Each figure is the median over the measured steps of a run, then over the runs.
- start-up: spawn of the process to the start of its first step (arrival of step 0 minus step 0's own duration).
- start-up + shutdown: the process's wall time outside its steps (wall minus first step's start to last step's
  arrival): start-up, then whatever follows the last step record (teardown, interpreter exit).
- time to reward target: spawn to the arrival of the first step at which the mean reward of the last
  REWARD_WINDOW steps is >= REWARD_TARGET.
- generated tok/s: completion tokens of a step (EOS included) / its rollout phase.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import REPO, RLPT_PYTHON, SYSTEMS, Run, launch  # noqa: E402
from workloads import REWARD_TARGET, REWARD_WINDOW, WORKLOADS  # noqa: E402

PHASES = ("rollout", "verify", "train", "sync")
SECTION = "## Side by side with TRL"


@dataclass(frozen=True)
class Row:
    key: str  # stable row name, e.g. "tiny step s" (the smoke test reads these)
    label: str
    higher_is_better: bool = False


def rows_for(workload: str, target: bool) -> list[Row]:
    w = workload
    rows = [Row(f"{w} step s", f"{w}: median step (s)")]
    rows += [Row(f"{w} {p} s", f"{w}: {p} phase (s)") for p in PHASES]
    rows += [Row(f"{w} other s", f"{w}: other (step - phases) (s)"), Row(f"{w} startup s", f"{w}: start-up (s)"),
             Row(f"{w} outside s", f"{w}: start-up + shutdown (s)")]
    if target:
        rows.append(Row(f"{w} target s", f"{w}: time to reward {REWARD_TARGET} (s)"))
    rows += [Row(f"{w} tok/s", f"{w}: generated tok/s", higher_is_better=True),
             Row(f"{w} wall s", f"{w}: process wall, whole run (s)")]
    return rows


def time_to_target(run: Run) -> float:
    """Seconds from spawn to the first step whose trailing REWARD_WINDOW-step mean reaches the target (inf: never)."""
    rewards = [s.reward for s in run.steps]
    for k in range(REWARD_WINDOW - 1, len(rewards)):
        if statistics.fmean(rewards[k - REWARD_WINDOW + 1:k + 1]) >= REWARD_TARGET:
            return run.steps[k].t_end
    return math.inf


def summarise(run: Run) -> dict[str, float]:
    """One run's figures, keyed like the rows (without the workload prefix)."""
    s = run.steps
    measured = range(1, max(len(s) - 1, 2))  # not step 0 (warm-up) nor the last (final checkpoint)
    period = {k: s[k].t_end - s[k - 1].t_end for k in measured}
    phase = {p: [getattr(s[k], f"{p}_s") for k in measured] for p in PHASES}
    other = [period[k] - sum(getattr(s[k], f"{p}_s") for p in PHASES) for k in measured]
    return {
        "step s": statistics.median(period.values()),
        **{f"{p} s": statistics.median(v) for p, v in phase.items()},
        "other s": statistics.median(other),
        "startup s": s[0].t_end - s[0].step_s,
        "outside s": run.wall_s - (s[-1].t_end - (s[0].t_end - s[0].step_s)),
        "target s": time_to_target(run),
        "tok/s": statistics.median(s[k].tokens / s[k].rollout_s for k in measured),
        "wall s": run.wall_s,
    }


def median_over_runs(runs: Sequence[Run]) -> dict[str, float]:
    per_run = [summarise(r) for r in runs]
    return {k: statistics.median(d[k] for d in per_run) for k in per_run[0]}


def fmt(x: float) -> str:
    if math.isinf(x):
        return "not reached"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def ratio(a: float, b: float) -> str:
    if math.isinf(a) or math.isinf(b) or b <= 0 or a < 0:
        return "n/a"
    return f"{a / b:.2f}"


def table(results: dict[str, dict[str, dict[str, float]]], n_runs: dict[str, int], foreign: dict[str, float]
          ) -> str:
    """Markdown: one row per figure; rlpt, TRL and rlpt / TRL (> 1: rlpt takes longer, or for tok/s, is faster)."""
    lines = ["| figure (median) | rlpt | TRL | rlpt / TRL |", "|---|---|---|---|"]
    for w, by_system in results.items():
        for row in rows_for(w, WORKLOADS[w].target):
            suffix = row.key[len(w) + 1:]
            a, b = by_system["rlpt"][suffix], by_system["trl"][suffix]
            lines.append(f"| {row.label} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
    runs = ", ".join(f"{w}: {n} run(s) per system" for w, n in n_runs.items())
    others = ", ".join(f"{s} runs {100 * x:.0f}%" for s, x in foreign.items())
    return "\n".join(lines) + (f"\n\n({runs}. Other jobs on the machine used, median over the runs, this share of "
                                f"its CPU time while they ran: {others}.)")


@contextmanager
def maybe_locked(path: Path | None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (when given) for the body: one heavy job at a time on a shared machine,
    taken per run so that other jobs can go in between the runs of a long benchmark."""
    if path is None:
        yield
        return
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(workloads: Sequence[str], out: Path, lock: Path | None) -> Path:
    """The assets (in rlpt's venv, which has transformers) and the TRL venv; both idempotent."""
    assets = out / "assets"
    with maybe_locked(lock):
        subprocess.run([str(RLPT_PYTHON), str(HERE / "assets.py"), "--out", str(assets), "--workloads", *workloads],
                       check=True, cwd=REPO)
        subprocess.run(["bash", str(HERE / "setup.sh")], check=True, cwd=REPO)
    return assets


def run_all(workloads: Sequence[str], steps: dict[str, int], rounds: int, out: Path, lock: Path | None,
            rlpt_set: Sequence[str] = ()) -> dict[str, dict[str, list[Run]]]:
    """Interleaved: for each round, each workload, both systems; the order of the two alternates by round."""
    assets = prepare(workloads, out, lock)
    runs: dict[str, dict[str, list[Run]]] = {w: {s: [] for s in SYSTEMS} for w in workloads}
    for r in range(rounds):
        for w in workloads:
            for system in (SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]):
                with maybe_locked(lock):
                    run = launch(system, WORKLOADS[w], assets, steps[w], seed=r, run_dir=out / f"r{r}-{w}-{system}",
                                 rlpt_set=rlpt_set)
                runs[w][system].append(run)
                fig = summarise(run)
                print(f"[vs_trl] round {r} {w} {system}: step {fig['step s']:.3f}s, start-up {fig['startup s']:.1f}s, "
                      f"wall {run.wall_s:.1f}s, last reward {run.steps[-1].reward:.3f}, other jobs' CPU share "
                      f"{100 * run.foreign_cpu:.0f}%", flush=True)
    return runs


def heading_of(rlpt_set: Sequence[str]) -> str:
    """The results section's heading: SECTION, naming the extra rlpt overrides when there are any."""
    return SECTION if not rlpt_set else f"{SECTION}, rlpt with {' '.join(rlpt_set)}"


def write_results(path: Path, heading: str, body: str) -> None:
    """Replace the section under exactly `heading` in `path` (up to the next '## ' heading), or append it."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + body + ("" if end < 0 else text[end + 1:])
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def rlpt_version() -> str:
    """The commit rlpt ran at, and how many files differed from it then (a shared working tree moves)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True)
    n = len(dirty.stdout.splitlines())
    return f"{head.stdout.strip() or '?'}" + (f" + uncommitted changes in {n} tracked file(s)" if n else "")


def cpu_model() -> str:
    """The CPU, as /proc/cpuinfo names it (model name, family/model/stepping, AVX-512 or not): the ratios move
    between CPUs of one machine kind (TRL's heavy step was 14.8 s on one, 22.5 s on another), and a virtual
    machine's model name alone ("AMD EPYC") may not tell two apart."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    break  # the end of the first processor's block
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.machine() or "unknown CPU"
    if "cpu family" in fields:
        name += (f", family {fields['cpu family']} model {fields.get('model', '?')} "
                 f"stepping {fields.get('stepping', '?')}")
    if "flags" in fields:
        name += ", AVX-512" if "avx512f" in fields["flags"].split() else ", no AVX-512"
    return name


def section(heading: str, tab: str, command: str, version: str) -> str:
    today = datetime.date.today().isoformat()
    return (f"{heading}\n\nCommand: `{command}` ({today}, this machine kind: {len(os.sched_getaffinity(0))} CPU cores "
            f"({cpu_model()}), shared; rlpt at "
            f"{version}, TRL 1.16.0).\n"
            f"Workloads and definitions: benchmarks/vs_trl/ (workloads.py, compare.py); README, \"Benchmark against "
            f"TRL\". rlpt / TRL > 1 means rlpt takes longer (for tok/s: generates faster).\n\n{tab}\n\n")


def parse_steps(items: Sequence[str]) -> dict[str, int]:
    steps = {name: w.steps for name, w in WORKLOADS.items()}
    for item in items:
        name, _, n = item.partition("=")
        if name not in WORKLOADS or not n.isdigit() or int(n) < 3:
            raise SystemExit(f"--steps {item!r}: expected WORKLOAD=N with WORKLOAD in {sorted(WORKLOADS)}, N >= 3")
        steps[name] = int(n)
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--steps", nargs="*", default=[], metavar="WORKLOAD=N", help="steps per run (>= 3)")
    p.add_argument("--rounds", type=int, default=3, help="runs per system and workload (interleaved)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "vs_trl")
    p.add_argument("--lock", type=Path, default=None, help="flock this file around each run (shared machines)")
    p.add_argument("--results", type=Path, default=None, help="write the table into this file's section")
    p.add_argument("--rlpt-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra rlpt config overrides (e.g. rollout.engine=hf); the section's heading names them")
    a = p.parse_args(argv)
    steps = parse_steps(a.steps)
    version = rlpt_version()  # before the runs: what they ran
    runs = run_all(a.workloads, steps, a.rounds, a.out, a.lock, a.rlpt_set)
    results = {w: {s: median_over_runs(rs) for s, rs in by_system.items()} for w, by_system in runs.items()}
    foreign = {s: statistics.median(r.foreign_cpu for by in runs.values() for r in by[s]) for s in SYSTEMS}
    tab = table(results, {w: a.rounds for w in a.workloads}, foreign)
    finite = {w: {s: {k: (None if math.isinf(v) else v) for k, v in d.items()} for s, d in by.items()}
              for w, by in results.items()}  # JSON has no inf: a target never reached is null
    per_run = [{"system": r.system, "workload": r.workload, "seed": r.seed, "wall_s": r.wall_s,
                "foreign_cpu": r.foreign_cpu} for by in runs.values() for rs in by.values() for r in rs]
    (a.out / "summary.json").write_text(json.dumps({"results": finite, "steps": steps, "rounds": a.rounds,
                                                    "runs": per_run}, indent=2))
    print(tab, flush=True)
    if a.results is not None:
        command = shlex.join([".venv/bin/python", "benchmarks/vs_trl/compare.py", *(argv or sys.argv[1:])])
        heading = heading_of(a.rlpt_set)
        write_results(a.results, heading, section(heading, tab, command, version))
        print(f"[vs_trl] wrote the section {heading!r} of {a.results}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
