"""A learner rank's start-up without DeepSpeed's Muon modules (actors.learner.without_deepspeed_muon): their
`@torch.compile` decorators import torch's inductor, ~1.3 s of every rank's start-up on CPU. One real rank (gloo,
world 1) in a fresh interpreter: set up, two optimizer steps that change the weights, and no inductor imported."""

import subprocess
import sys
from pathlib import Path

import pytest

from rlpt.models.tiny import init_tiny

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import socket, sys, torch
from actors.learner import LearnerRank
from rlpt.config import load_config
cfg = load_config(None, ["model.path={model}", "learner.micro_batch_size=4", "learner.zero_stage={stage}"])
rank = LearnerRank(0, 1, cfg, "{model}")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
rank.setup("127.0.0.1", port, 4, 1, 10)
before = rank.checksums()
ids = torch.randint(0, 16, (4, 8))
for _ in range(2):
    rank.backward_step(-rank.logprobs(ids, torch.ones_like(ids)).mean())
changed = sum(a != b for a, b in zip(before.values(), rank.checksums().values()))
print("RESULT", rank.optimizer_steps(), changed > 0, "torch._inductor.compile_fx" in sys.modules,
      type(sys.modules["deepspeed.runtime.zero.muon.muon_optimizer"].MuonWithAuxAdam).__name__,
      sys.modules["deepspeed.runtime.zero.muon.muon_optimizer"].MuonWithAuxAdam.__module__)
"""


@pytest.mark.parametrize("stage", [2, 3])
def test_a_rank_sets_up_and_trains_without_importing_the_inductor(tmp_path, stage):
    model = tmp_path / "model"
    init_tiny(model)
    res = subprocess.run([sys.executable, "-c", SCRIPT.format(model=model, stage=stage)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert "RESULT 2 True False type actors.learner" in res.stdout, (res.stdout[-1000:], res.stderr[-3000:])
