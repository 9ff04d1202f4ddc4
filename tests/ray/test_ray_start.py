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
