"""`rlpt submit` / `rlpt jobs` against a real Ray head that this module starts with `ray start --head` (its own
ports and temp dir, so the session cluster of conftest.py is untouched), through the Ray Jobs SDK."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlpt.metrics import read_metrics

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The head's own ports: two Ray clusters on one machine must not share any (client server, agents, metrics).
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
              "--node-manager-port", "--object-manager-port")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass(frozen=True)
class Head:
    address: str  # the job server, http://127.0.0.1:<dashboard port>
    auth: dict[str, str]  # env vars a client needs: the head uses token authentication, as Ray 2.60 heads may


def clean_env(auth: dict[str, str]) -> dict[str, str]:
    """This process's env (the Makefile's HF_HUB_OFFLINE etc.) without any pointer to another cluster or token."""
    drop = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **auth}


def head_env(auth: dict[str, str]) -> dict[str, str]:
    """What the head (and so every job driver and actor on it) inherits: the venv first on PATH, so a job's `python`
    is this venv's."""
    env = clean_env(auth)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def ours(temp_dir: str) -> list[str]:
    """Live processes of our head: every Ray process of it (and `ray start` itself) names its temp dir."""
    mark = re.compile(re.escape(temp_dir) + r"(?:[/\s]|$)")
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if mark.search(cmd):
                found.append(f"{pid}: {cmd[:200]}")
    return found


@pytest.fixture(scope="module")
def head():
    from actors.placement import needed_cpus
    from rlpt.config import load_config

    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ports = free_ports(len(PORT_FLAGS))
    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
           "--num-cpus", str(needed_cpus(load_config(None, [])) + 1), "--temp-dir", temp_dir, "--block",
           "--disable-usage-stats", *(f"{f}={p}" for f, p in zip(PORT_FLAGS, ports))]
    log = Path(temp_dir) / "ray_start.log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=head_env(auth), start_new_session=True, stdout=f, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{ports[1]}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"`ray start --head` exited {proc.returncode}: {log.read_text()[-3000:]}"
            try:
                probe = urllib.request.Request(f"{address}/api/version",
                                               headers={"Authorization": f"Bearer {auth['RAY_AUTH_TOKEN']}"})
                with urllib.request.urlopen(probe, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no job server in 180 s: {log.read_text()[-3000:]}"
            time.sleep(1)
        yield Head(address, auth)
    finally:
        # SIGTERM the group (the raylet and GCS exit in seconds; the autoscaler monitor and `ray start` itself
        # linger ~40 s, which buys nothing for a throw-away head), then SIGKILL what is left.
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and ours(temp_dir):
                time.sleep(0.5)
        proc.wait(timeout=10)
        left = ours(temp_dir)
        for line in left:  # escaped the group: kill by pid (ours: they name our temp dir)
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert not left, f"processes of the test head were left running: {left}"
        shutil.rmtree(temp_dir, ignore_errors=True)


def rlpt(head: Head | None, *args: str, timeout: float = 360) -> subprocess.CompletedProcess:
    """`python -m rlpt.cli ARGS --address HEAD` from the repo root (the job's working dir), with the head's token."""
    extra = ["--address", head.address] if head else []
    return subprocess.run([sys.executable, "-m", "rlpt.cli", *args, *extra], cwd=ROOT,
                          env=clean_env(head.auth if head else {}), capture_output=True, text=True, timeout=timeout)


def test_submit_default_run_follows_to_succeeded(head, tmp_path):
    res = rlpt(head, "submit", "run.steps=8", f"run.root={tmp_path}", "--follow")
    output = res.stdout + res.stderr
    assert res.returncode == 0, output[-5000:]
    job_id = re.search(r"submitted job (\S+) to ", res.stdout).group(1)
    assert "trained 8 grpo steps" in res.stdout  # the driver's last line, streamed through the followed logs
    assert f"job {job_id} SUCCEEDED" in res.stdout
    status = rlpt(head, "jobs", "status", job_id, timeout=60)
    assert status.returncode == 0 and f"job {job_id}: SUCCEEDED" in status.stdout, status.stdout + status.stderr
    assert [r["step"] for r in read_metrics(tmp_path / "default" / "metrics.jsonl")] == list(range(8))


def test_submit_bad_config_fails_on_the_cluster_with_the_key(head, tmp_path):
    """--no-validate ships a bad config anyway: the job itself must fail and say why (without the flag, `rlpt
    submit` refuses it locally: tests/unit/test_cli.py)."""
    res = rlpt(head, "submit", "algorithm.name=nope", f"run.root={tmp_path}", "--no-validate", "--follow",
               timeout=180)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+) to ", res.stdout).group(1)
    final = res.stdout[res.stdout.index(f"job {job_id} FAILED"):]
    assert "algorithm.name: Input should be 'grpo'" in final  # in the job's message, not only in the logs
    missing = rlpt(head, "jobs", "status", "raysubmit_nosuchjob", timeout=60)
    assert missing.returncode == 2 and "no job 'raysubmit_nosuchjob'" in missing.stderr
    no_token = rlpt(None, "jobs", "list", "--address", head.address, timeout=60)
    assert no_token.returncode == 2 and "token authentication" in " ".join(no_token.stderr.split()), no_token.stderr
