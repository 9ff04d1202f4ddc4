"""DPO and RFT-rounds loops against in-process fakes."""

import pyarrow.parquet as pq
import pytest
import torch

from rlpt.config import load_config
from rlpt.loops import dpo, rft
from rlpt.loops.common import Workers
from rlpt.metrics import read_metrics
from tests.loops.test_online_loop import (REQUIRED, FakeHealth, FakeLearner, FakeRollout, FakeSync, FakeVerifier,
                                          prompts)

pytestmark = pytest.mark.loops


class PairLearner(FakeLearner):
    def __init__(self):
        super().__init__()
        self.resets = 0

    def reset_to_base(self):
        self.resets += 1


class FakeReference:
    def logprobs(self, ids, attn):
        return torch.zeros(ids.shape)


def workers(learner):
    ro = FakeRollout()
    return Workers(rollout=ro, verifier=FakeVerifier(), learner=learner, sync=FakeSync(ro), health=FakeHealth(),
                   reference=FakeReference())


def test_dpo_rounds_pairs_and_metrics(tmp_path):
    cfg = load_config(None, [f"run.root={tmp_path}", "run.tensorboard=false", "algorithm.name=dpo",
                             "algorithm.dpo.rounds=3", "algorithm.dpo.prompts_per_round=6",
                             "algorithm.dpo.samples_per_prompt=4", "algorithm.dpo.epochs=2"])
    learner = PairLearner()
    dpo.run(cfg, workers(learner), prompts(12, same_every=3), tmp_path, pad_id=0)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2] and all(set(REQUIRED) <= set(r) for r in rows)
    assert len(learner.batches) == 3  # one learner step per round (its epochs are the algorithm's plan)
    for r, batch in zip(rows, learner.batches):
        assert batch.num_rows == 2 * r["dpo/pairs"]
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


def _resume_split(tmp_path, loop, overrides, total, half):
    """Run `total` rounds straight, and `half` + resume + the rest; return both learners and run dirs."""
    from rlpt.loops.common import LoopState, latest_checkpoint

    def cfg(d, rounds, *extra):
        return load_config(None, [f"run.root={d}", "run.tensorboard=false", *overrides, *extra,
                                  f"algorithm.{loop.__name__.split('.')[-1]}.rounds={rounds}"])

    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full = PairLearner()
    loop.run(cfg(full_dir, total), workers(full), prompts(12, same_every=3), full_dir, pad_id=0)
    first = PairLearner()
    loop.run(cfg(split_dir, half), workers(first), prompts(12, same_every=3), split_dir, pad_id=0)
    state = LoopState.read(latest_checkpoint(split_dir) / "loop_state.json")
    assert state.next_step == half and state.rng is not None
    second = PairLearner()
    w = workers(second)
    w.rollout.version = state.policy_version  # what the initial sync after a resume does
    loop.run(cfg(split_dir, total), w, prompts(12, same_every=3), split_dir, pad_id=0, resume=state)
    return full, first, second, full_dir, split_dir


def test_dpo_resume_equals_uninterrupted_run(tmp_path):
    # random pairing draws from the loop's RNG: a resume that forgot it would pick other pairs
    full, first, second, full_dir, split_dir = _resume_split(
        tmp_path, dpo, ["algorithm.name=dpo", "algorithm.dpo.prompts_per_round=6", "algorithm.dpo.samples_per_prompt=4",
                        "algorithm.dpo.pairing=random"], total=4, half=2)
    ids = [b.input_ids_B_T.tolist() for b in full.batches]
    assert ids == [b.input_ids_B_T.tolist() for b in first.batches + second.batches]
    a, b = read_metrics(full_dir / "metrics.jsonl"), read_metrics(split_dir / "metrics.jsonl")
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for key in ("reward/mean", "dpo/pairs", "policy_version"):
        assert [r[key] for r in b] == [r[key] for r in a]
    for rnd in range(4):
        name = f"pairs/round_{rnd:06d}.parquet"
        assert pq.read_table(split_dir / name).to_pylist() == pq.read_table(full_dir / name).to_pylist()


def test_rft_rounds_resume_equals_uninterrupted_run(tmp_path):
    # epochs shuffle the SFT set with the loop's RNG: the batch order after a resume must match
    full, first, second, full_dir, split_dir = _resume_split(
        tmp_path, rft, ["algorithm.name=rft", "algorithm.rft.mode=rounds", "algorithm.rft.prompts_per_round=6",
                        "algorithm.rft.k_correct=2", "algorithm.rft.max_trials=8", "algorithm.rft.epochs=3",
                        "rollout.samples_per_prompt=4", "rollout.prompts_per_step=1"], total=4, half=2)
    order = [b.input_ids_B_T.tolist() for b in full.batches]
    assert len(order) > 4 and order == [b.input_ids_B_T.tolist() for b in first.batches + second.batches]
    a, b = read_metrics(full_dir / "metrics.jsonl"), read_metrics(split_dir / "metrics.jsonl")
    assert [r["reward/mean"] for r in b] == [r["reward/mean"] for r in a] and len(b) == 4


def test_resume_without_rng_state_is_a_clear_error(tmp_path):
    from rlpt.loops.common import LoopState

    cfg = load_config(None, [f"run.root={tmp_path}", "run.tensorboard=false", "algorithm.name=dpo"])
    with pytest.raises(ValueError, match="no RNG state"):
        dpo.run(cfg, workers(PairLearner()), prompts(12), tmp_path, pad_id=0, resume=LoopState(1, 1, {}, None))
