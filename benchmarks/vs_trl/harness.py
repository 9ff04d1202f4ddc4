"""Launch one run of one system on one workload and record when each of its steps finished.

Both systems are timed the same way from outside: the driver spawns the process, then polls the per-step file the
system writes (rlpt: its own `metrics.jsonl`; TRL: run_trl.py's lines, one per step, flushed) every POLL_S and
stamps each new line with its arrival time since the spawn. Inside a step, the phase split is each system's own
timer. Standard library only (the driver stays light: both systems get the CPUs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from workloads import CLIP_EPS, Workload  # noqa: E402

POLL_S = 0.005  # stamping resolution; a stat() every 5 ms costs next to nothing
CPU_SAMPLE_S = 2.0  # how often the run's process tree is scanned for its CPU time (a scan costs a few ms)
CLK_TCK = os.sysconf("SC_CLK_TCK")
RLPT_PYTHON = REPO / ".venv" / "bin" / "python"
TRL_PYTHON = HERE / ".venv-trl" / "bin" / "python"
SYSTEMS = ("rlpt", "trl")


@dataclass(frozen=True)
class StepRecord:
    step: int
    t_end: float  # seconds from the spawn of the process to the arrival of this step's line
    step_s: float  # the step's duration by the system's own clock
    rollout_s: float
    verify_s: float
    train_s: float
    sync_s: float
    reward: float
    tokens: float  # generated completion tokens (EOS included)


@dataclass(frozen=True)
class Run:
    system: str
    workload: str
    seed: int
    steps: list[StepRecord]
    wall_s: float  # spawn to exit
    returncode: int
    log: Path
    foreign_cpu: float  # share of the machine's CPU time used by processes outside this run (other jobs)


class CpuShare:
    """How much of the machine's CPU time went to processes outside one run's process tree while it ran: on a shared
    machine, the evidence of whether a measurement was disturbed. Machine busy time from /proc/stat; the tree's from
    /proc/<pid>/stat (utime + stime of each descendant, its last sample; Ray's workers descend from the driver)."""

    def __init__(self, root: int) -> None:
        self.root, self.cpu_by_pid = root, {}
        self.busy0, self.t0 = self.machine_busy_s(), time.perf_counter()

    @staticmethod
    def machine_busy_s() -> float:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
        return (user + nice + system + irq + softirq) / CLK_TCK

    def sample(self) -> None:
        parent, cpu = {}, {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:  # gone between listing and reading
                    continue
                parent[int(d.name)] = int(fields[1])
                cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        for pid in cpu:
            p = pid
            while p not in (0, 1, self.root) and p in parent:
                p = parent[p]
            if p == self.root:
                self.cpu_by_pid[pid] = cpu[pid]

    def foreign_share(self) -> float:
        busy = self.machine_busy_s() - self.busy0
        capacity = (time.perf_counter() - self.t0) * (os.cpu_count() or 1)
        return max(busy - sum(self.cpu_by_pid.values()), 0.0) / capacity


def rlpt_record(d: dict, t_end: float) -> StepRecord:
    return StepRecord(step=int(d["step"]), t_end=t_end, step_s=d["timing/step"], rollout_s=d["timing/rollout"],
                      verify_s=d["timing/verify"], train_s=d["timing/train"], sync_s=d["timing/sync"],
                      reward=d["reward/mean"], tokens=d["tokens/generated"])


def trl_record(d: dict, t_end: float) -> StepRecord:
    return StepRecord(step=int(d["step"]), t_end=t_end, step_s=d["step_s"], rollout_s=d["rollout_s"],
                      verify_s=d["verify_s"], train_s=d["train_s"], sync_s=d["sync_s"], reward=d["reward"],
                      tokens=d["tokens"])


def rlpt_command(w: Workload, assets: Path, steps: int, seed: int, run_dir: Path, extra: Sequence[str] = ()
                 ) -> list[str]:
    """`rlpt train` with the workload's settings as overrides (the schema: rlpt/config.py), then `extra` ones
    (compare.py --rlpt-set, e.g. rollout.engine=hf)."""
    d = assets / w.name
    overrides = {
        "model.path": d / "model", "data.task": "null", "data.path": d / "prompts.jsonl",
        "verifier.name": "arith_verifier:rlpt_score",
        "rollout.prompts_per_step": w.prompts_per_step, "rollout.samples_per_prompt": w.samples_per_prompt,
        "rollout.max_new_tokens": w.max_new_tokens, "rollout.temperature": 1.0,
        "algorithm.name": "grpo", "algorithm.grpo.beta": 0.0, "algorithm.grpo.loss_agg": "token-mean",
        "algorithm.grpo.scale_rewards": "group", "algorithm.grpo.eps_low": CLIP_EPS,
        "algorithm.grpo.eps_high": CLIP_EPS,
        "learner.lr": w.lr, "learner.lr_schedule": "constant", "learner.weight_decay": 0.0,
        "learner.grad_clip": 1.0, "learner.micro_batch_size": w.batch, "learner.mini_batches": 1,
        "learner.ppo_epochs": 1, "model.dtype": "float32", "run.steps": steps, "run.seed": seed,
    }
    return [str(RLPT_PYTHON), "-m", "rlpt.cli", "train", "--run-dir", str(run_dir),
            *(f"{k}={v}" for k, v in overrides.items()), *extra]


def trl_command(w: Workload, assets: Path, steps: int, seed: int, run_dir: Path, extra: Sequence[str] = ()
                ) -> list[str]:
    return [str(TRL_PYTHON), str(HERE / "run_trl.py"), "--workload", w.name, "--assets", str(assets),
            "--steps", str(steps), "--seed", str(seed), "--out", str(run_dir / "steps.jsonl")]


def run_env() -> dict[str, str]:
    """The caller's environment plus what offline runs need. Thread counts are left alone on purpose: each system
    runs with what it sets itself (see README, "Benchmark against TRL")."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(
                   p for p in (str(HERE), env.get("PYTHONPATH")) if p))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def watch(proc: subprocess.Popen, path: Path, t0: float, parse: Callable[[dict, float], StepRecord],
          timeout_s: float, share: CpuShare) -> list[StepRecord]:
    """Stamp each complete new line of `path` with its arrival time (since t0) until the process exits."""
    records: list[StepRecord] = []
    buf, offset, next_sample = b"", 0, 0.0
    while True:
        if time.perf_counter() >= next_sample:
            share.sample()
            next_sample = time.perf_counter() + CPU_SAMPLE_S
        done = proc.poll() is not None  # read once more after exit: the last line may land just before
        if path.exists() and path.stat().st_size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            now = time.perf_counter() - t0
            offset += len(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            records += [parse(json.loads(line), now) for line in lines if line.strip()]
        if done:
            return records
        if time.perf_counter() - t0 > timeout_s:
            proc.kill()
            raise TimeoutError(f"{path.parent}: the run took longer than {timeout_s:.0f}s (killed)")
        time.sleep(POLL_S)


def launch(system: str, w: Workload, assets: Path, steps: int, seed: int, run_dir: Path,
           timeout_s: float = 3600.0, rlpt_set: Sequence[str] = ()) -> Run:
    """One run, start to exit; a run that fails raises with the tail of its log. `rlpt_set`: extra rlpt overrides."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    make, parse, steps_file = ((rlpt_command, rlpt_record, run_dir / "metrics.jsonl") if system == "rlpt"
                               else (trl_command, trl_record, run_dir / "steps.jsonl"))
    log = run_dir / "console.log"
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(make(w, assets, steps, seed, run_dir, rlpt_set), cwd=REPO, env=run_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        share = CpuShare(proc.pid)
        records = watch(proc, steps_file, t0, parse, timeout_s, share)
        wall = time.perf_counter() - t0
    if proc.returncode != 0 or len(records) != steps:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{system} {w.name} (seed {seed}) exited {proc.returncode} after {len(records)} of "
                           f"{steps} steps; log {log}:\n{tail}")
    return Run(system, w.name, seed, records, wall, proc.returncode, log, share.foreign_share())
