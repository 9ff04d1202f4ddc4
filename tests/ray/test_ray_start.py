"""placement.init_ray_while_importing: Ray starts on the calling thread while a module is imported on another; a
failed import ends the Ray it started (fresh interpreters: the session's cluster is not touched)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray

SCRIPT = """
import sys, ray
from actors.placement import init_ray_while_importing
from rlpt.config import load_config
cfg = load_config(None, ["cluster.num_cpus=2"])
try:
    seconds, module = init_ray_while_importing(cfg, sys.argv[1])
    print("RESULT ok", module.__name__, seconds > 0, ray.is_initialized(), ray.get(ray.remote(lambda: 7).remote()))
except ModuleNotFoundError as e:
    print("RESULT failed", e.name, ray.is_initialized())
"""


@pytest.mark.parametrize("module, expected", [("actors.launch", "RESULT ok actors.launch True True 7"),
                                              ("no_such_module_rlpt", "RESULT failed no_such_module_rlpt False")])
def test_ray_starts_while_a_module_imports_and_a_failed_import_ends_it(module, expected):
    res = subprocess.run([sys.executable, "-c", SCRIPT, module], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert expected in res.stdout, (res.stdout[-1000:], res.stderr[-3000:])


def test_a_ray_already_initialised_is_not_ours_to_end():
    script = ("import ray; ray.init(address='local', num_cpus=2, include_dashboard=False); "
              "from actors.placement import init_ray_while_importing; from rlpt.config import load_config; "
              "seconds, _ = init_ray_while_importing(load_config(None, []), 'actors.launch'); "
              "print('RESULT', seconds, ray.is_initialized())")
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "RESULT None True" in res.stdout, (res.stdout[-1000:], res.stderr[-3000:])


def test_shutdown_ends_every_process_of_the_cluster_it_started_and_kills_the_monitor_first():
    """placement.shutdown_ray: the autoscaler monitor is already dead (SIGKILL) when ray.shutdown starts (which
    would give it SIGTERM and a second first); every process of the node is gone after it. Mutation check: without
    the kill the monitor is alive (returncode None) when ray.shutdown starts."""
    script = """
import os, ray
from actors.placement import init_ray, shutdown_ray
from rlpt.config import load_config
init_ray(load_config(None, ["cluster.num_cpus=2"]))
assert ray.get(ray.remote(lambda: 7).remote()) == 7
node = ray._private.worker._global_node
procs = {k: [i.process for i in v] for k, v in node.all_processes.items()}
plain, seen = ray.shutdown, []
ray.shutdown = lambda: (seen.append(procs["monitor"][0].poll()), plain())
shutdown_ray()
alive = [k for k, ps in procs.items() for p in ps if p.poll() is None]
print("RESULT", sorted(procs), seen, alive, ray.is_initialized())
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, (res.stdout[-1000:], res.stderr[-3000:])
    assert "'monitor'" in line and "'raylet'" in line and line.endswith("[-9] [] False"), line
