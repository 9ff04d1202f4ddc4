"""DPO and RFT-rounds loops against in-process fakes."""

import pyarrow.parquet as pq
import pytest
import torch

from rlpt.config import load_config
from rlpt.loops import dpo, rft
from rlpt.loops.common import Workers
from rlpt.metrics import read_metrics
from tests.loops.test_online_loop import REQUIRED, FakeLearner, FakeRollout, FakeSync, FakeVerifier, prompts

pytestmark = pytest.mark.loops


class PairLearner(FakeLearner):
    def __init__(self):
        super().__init__()
        self.pair_batches, self.resets = [], 0

    def train_pairs(self, batch, step, epochs):
        self.pair_batches.append((batch, epochs))
        return {"dpo/loss": 0.69, "dpo/margin": 0.0, "dpo/accuracy": 0.5, "logprob_gap/mean": 0.0}

    def reset_to_base(self):
        self.resets += 1


class FakeReference:
    def logprobs(self, ids, attn):
        return torch.zeros(ids.shape)


def workers(learner):
    ro = FakeRollout()
    return Workers(rollout=ro, verifier=FakeVerifier(), learner=learner, sync=FakeSync(ro), reference=FakeReference())


def test_dpo_rounds_pairs_and_metrics(tmp_path):
    cfg = load_config(None, [f"run.root={tmp_path}", "run.tensorboard=false", "algorithm.name=dpo",
                             "algorithm.dpo.rounds=3", "algorithm.dpo.prompts_per_round=6",
                             "algorithm.dpo.samples_per_prompt=4", "algorithm.dpo.epochs=2"])
    learner = PairLearner()
    dpo.run(cfg, workers(learner), prompts(12, same_every=3), tmp_path, pad_id=0)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2] and all(set(REQUIRED) <= set(r) for r in rows)
    for r, (batch, epochs) in zip(rows, learner.pair_batches):
        assert epochs == 2 and batch.num_rows == 2 * r["dpo/pairs"]
        assert batch.ref_logprobs_B_T is not None
        assert batch.positive_B.tolist() == [1.0, 0.0] * int(r["dpo/pairs"])  # chosen, rejected interleaved
        assert r["dpo/pairs"] + r["dpo/skipped_prompts"] == 6
    # 18 prompts drawn from 12 (1.5 epochs), 4 of which always give identical answers (no contrast)
    assert sum(r["dpo/skipped_prompts"] for r in rows) >= 4
    table = pq.read_table(tmp_path / "pairs" / "round_000001.parquet")
    assert table.num_rows == rows[1]["dpo/pairs"] and set(table.column("chosen").to_pylist()) == {"1"}
    assert [r["policy_version"] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("quota", ["uniform", "prop2diff"])
def test_rft_rounds_quota_budget_and_restart(tmp_path, quota):
    cfg = load_config(None, [f"run.root={tmp_path}", "run.tensorboard=false", "algorithm.name=rft",
                             "algorithm.rft.mode=rounds", "algorithm.rft.rounds=2", "algorithm.rft.prompts_per_round=6",
                             "algorithm.rft.k_correct=2", "algorithm.rft.max_trials=8", f"algorithm.rft.quota={quota}",
                             "algorithm.rft.restart=base", "algorithm.rft.epochs=2", "rollout.samples_per_prompt=4"])
    learner = PairLearner()
    rft.run(cfg, workers(learner), prompts(12), tmp_path, pad_id=0)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 2 and all(set(REQUIRED) <= set(r) for r in rows)
    assert learner.resets == 2 and len(learner.batches) == 2 * 2  # one chunk per epoch per round
    sft = pq.read_table(tmp_path / "sft" / "round_000000.parquet").to_pylist()
    per_prompt = {}
    for r in sft:
        per_prompt[r["prompt_uid"]] = per_prompt.get(r["prompt_uid"], 0) + 1
        assert r["completion"] == "1"  # only verified-correct samples
    # the fake emits only two distinct responses, so dedup caps each prompt at one correct answer
    assert all(n == 1 for n in per_prompt.values()) and rows[0]["rft/kept"] == len(sft)
    assert rows[0]["rft/samples"] <= 6 * 8  # the trial budget (max_trials per prompt) holds
