"""rlpt (the library) must import with ray, vllm and deepspeed unavailable (DESIGN.md §2)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = r"""
import importlib, importlib.util, pkgutil, sys

BLOCKED = ("ray", "vllm", "deepspeed")
# A None entry in sys.modules is exactly what "not installed" looks like to importers: `import ray` raises
# ImportError and importlib.util.find_spec("ray") returns None (how transformers probes for deepspeed).
for name in BLOCKED:
    sys.modules[name] = None
assert importlib.util.find_spec("deepspeed") is None

import rlpt
names = ["rlpt"] + [m.name for m in pkgutil.walk_packages(rlpt.__path__, "rlpt.")]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in BLOCKED and mod is not None)
assert not leaked, leaked
print(len(names))
"""

def test_rlpt_imports_without_ray_vllm_deepspeed():
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert int(res.stdout.strip().splitlines()[-1]) >= 15  # every submodule was walked, not just the package


def test_the_blocker_really_blocks():
    res = subprocess.run([sys.executable, "-c", SCRIPT.replace("import rlpt\n", "import rlpt\nimport ray\n")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "import of ray halted" in res.stderr
