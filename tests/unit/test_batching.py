import pytest
import torch

from rlpt.algorithms.grpo import aggregate
from rlpt.algorithms.grpo import advantages
from rlpt.batching import aggregation_weights, learner_layout, plan_mini_batches, rewards_by_group, token_rows
from rlpt.config import LearnerConfig, load_config
from rlpt.types import Prompt, Rollout, ScoredRollout

pytestmark = pytest.mark.unit


def scored(uid, prompt_ids, resp, reward, lps=None):
    p = Prompt(uid=uid, text=uid, answer="1", prompt_ids=tuple(prompt_ids))
    ro = Rollout(prompt=p, sample_index=0, response_ids_T=tuple(resp), logprobs_T=tuple(lps or [-1.0] * len(resp)),
                 text="", finish_reason="stop", policy_version=0)
    return ScoredRollout(ro, reward=reward, correct=reward > 0)


def test_rows_masks_and_advantages():
    # group of 2: rewards 1, 0 -> "none" scaling advantages +0.5, -0.5
    s = [scored("a", [5, 6], [7, 8, 9], 1.0, [-0.1, -0.2, -0.3]), scored("a", [5, 6], [7], 0.0, [-0.4])]
    adv = advantages(s, load_config(None, ["algorithm.grpo.scale_rewards=none", "rollout.samples_per_prompt=2"]))
    assert adv.tolist() == [0.5, -0.5]
    b = token_rows(s, adv, pad_id=0)
    assert b.input_ids_B_T.tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]
    assert b.attention_mask_B_T.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert b.loss_mask_B_T.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]]
    assert b.advantages_B_T.tolist() == [[0, 0, 0.5, 0.5, 0.5], [0, 0, -0.5, 0, 0]]
    assert b.rollout_logprobs_B_T[0, 2:].tolist() == pytest.approx([-0.1, -0.2, -0.3])
    assert b.rollout_logprobs_B_T[1, 2].item() == pytest.approx(-0.4)


def token_rows_one_row_at_a_time(scored, advantages_B, pad_id):
    """token_rows as it was before it built its rows as lists (one tensor write per row): the reference."""
    seqs = [list(s.rollout.prompt.prompt_ids) + list(s.rollout.response_ids_T) for s in scored]
    B, T = len(seqs), max(len(x) for x in seqs)
    ids, attn = torch.full((B, T), pad_id, dtype=torch.long), torch.zeros((B, T), dtype=torch.long)
    mask, logp = torch.zeros((B, T), dtype=torch.float32), torch.zeros((B, T), dtype=torch.float32)
    for b, (s, seq) in enumerate(zip(scored, seqs)):
        n_prompt, n_resp = len(s.rollout.prompt.prompt_ids), len(s.rollout.response_ids_T)
        ids[b, : len(seq)] = torch.tensor(seq)
        attn[b, : len(seq)] = 1
        mask[b, n_prompt : n_prompt + n_resp] = (torch.tensor(s.rollout.loss_mask_T, dtype=torch.float32)
                                                if s.rollout.loss_mask_T else 1.0)
        logp[b, n_prompt : n_prompt + n_resp] = torch.tensor(s.rollout.logprobs_T, dtype=torch.float32)
    return ids, attn, mask, advantages_B.view(-1, 1).float() * mask, logp


def test_rows_equal_the_row_at_a_time_construction_bit_for_bit():
    import random
    from dataclasses import replace

    rng = random.Random(0)
    rows = []
    for i in range(64):
        n = rng.randrange(0, 12)
        row = scored(f"p{i // 4}", [rng.randrange(90) for _ in range(rng.randrange(1, 9))],
                     [rng.randrange(90) for _ in range(n)], float(i % 3 == 0), [rng.uniform(-9, 0) for _ in range(n)])
        if i % 5 == 0:  # a multi-turn row: some response tokens are observations
            row = replace(row, rollout=replace(row.rollout, loss_mask_T=tuple(rng.randrange(2) for _ in range(n))))
        rows.append(row)
    adv = torch.randn(64, generator=torch.Generator().manual_seed(1))
    b = token_rows(rows, adv, pad_id=3)
    got = (b.input_ids_B_T, b.attention_mask_B_T, b.loss_mask_B_T, b.advantages_B_T, b.rollout_logprobs_B_T)
    for g, want in zip(got, token_rows_one_row_at_a_time(rows, adv, 3)):
        assert g.dtype == want.dtype and torch.equal(g, want)
    assert b.positive_B.tolist() == [float(i % 3 == 0) for i in range(64)]


def test_a_rollout_whose_logprobs_do_not_match_its_tokens_is_named():
    bad = scored("q7", [1, 2], [3, 4], 1.0, [-0.5])
    with pytest.raises(ValueError, match=r"rollout q7#0: 2 response tokens but 1 logprobs"):
        token_rows([bad], torch.tensor([1.0]), pad_id=0)


def test_multi_turn_rows_train_only_the_models_tokens():
    """A two-turn trajectory (model 2 tokens, observation 3, model 1) next to a one-turn rollout: observation tokens
    get no loss, no advantage, no logprob; token-mean weights count the model's 3 + 1 tokens only."""
    from rlpt.trajectory import Trajectory

    p = Prompt(uid="a", text="a", answer="1", prompt_ids=(5, 6))
    t = (Trajectory(p, 0).with_model_turn((7, 8), (-0.1, -0.2), 0).with_observation((30, 31, 32))
         .with_model_turn((9,), (-0.3,), 0))
    two = ScoredRollout(t.to_rollout("x", "stop", "e"), reward=1.0, correct=True)
    one = scored("a", [5, 6], [7], 0.0, [-0.4])
    b = token_rows([two, one], torch.tensor([0.5, -0.5]), pad_id=0)
    assert b.input_ids_B_T.tolist() == [[5, 6, 7, 8, 30, 31, 32, 9], [5, 6, 7, 0, 0, 0, 0, 0]]
    assert b.loss_mask_B_T.tolist() == [[0, 0, 1, 1, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0, 0]]
    assert b.advantages_B_T[0].tolist() == [0, 0, 0.5, 0.5, 0, 0, 0, 0.5]
    assert b.rollout_logprobs_B_T[0].tolist() == pytest.approx([0, 0, -0.1, -0.2, 0, 0, 0, -0.3])
    w = aggregation_weights(b.loss_mask_B_T, "token-mean", None)
    assert w.sum().item() == pytest.approx(1.0) and w[0, 2].item() == pytest.approx(1 / 4)
    assert (w[0, 4:7] == 0).all()


def test_overlong_shaping_enters_advantages():
    # max_new=4, buffer=2, penalty=1: lengths 4 -> -1.0 (L > max-buffer: (2-4)/2 = -1), 1 -> 0
    s = [scored("a", [1], [2, 3, 4, 5], 1.0), scored("a", [1], [2], 1.0)]
    cfg = load_config(None, ["algorithm.grpo.scale_rewards=none", "rollout.samples_per_prompt=2",
                             "rollout.max_new_tokens=4", "algorithm.grpo.overlong={enabled: true, buffer_len: 2}"])
    assert advantages(s, cfg).tolist() == [-0.5, 0.5]


def test_groups_must_be_whole_and_pure():
    with pytest.raises(ValueError, match="whole groups"):
        rewards_by_group([scored("a", [1], [2], 1.0)] * 3, 2)
    with pytest.raises(ValueError, match="mix prompts"):
        rewards_by_group([scored("a", [1], [2], 1.0), scored("b", [1], [2], 1.0)], 2)


def closed_form(loss, mask, mode, norm_len):
    """The aggregation rules written out directly (the code has one implementation: the loss weights)."""
    m = mask.bool()
    if mode == "token-mean":
        return loss[m].sum() / m.sum()
    if mode == "seq-mean-token-mean":
        rows = [loss[b][m[b]].mean() for b in range(loss.shape[0]) if m[b].any()]
        return torch.stack(rows).mean()
    return loss[m].sum() / (loss.shape[0] * norm_len)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregation_weights_match_the_closed_form(mode):
    torch.manual_seed(0)
    loss = torch.randn(5, 7)
    mask = (torch.rand(5, 7) > 0.4).float()
    mask[3] = 0  # an empty row
    w = aggregation_weights(mask, mode, norm_len=7)
    want = closed_form(loss, mask, mode, 7).item()
    assert (loss * w).sum().item() == pytest.approx(want, rel=1e-6)
    assert aggregate(loss, mask, mode, norm_len=7).item() == pytest.approx(want, rel=1e-6)


def test_layout_and_minibatch_plan_split_rows_exactly_once():
    layout = learner_layout(10, LearnerConfig(num_ranks=2, mini_batches=2, micro_batch_size=2))
    # 10 rows -> 5 per mini-batch -> 3 per rank -> micro 2 -> 2 micro-batches per rank (4 rows, 1 padded)
    assert (layout.micro, layout.micro_per_rank, layout.rows_per_mini_batch) == (2, 2, 8)
    s = [scored(f"p{i // 2}", [1], [10 + i], float(i % 2)) for i in range(10)]
    batch = token_rows(s, torch.arange(10.0), pad_id=0)
    plan = plan_mini_batches(batch, layout, "token-mean", None, pad_id=0, seed=3)
    assert len(plan) == 2 and all(len(mb) == 2 for mb in plan)
    rows = [int(t) for mb in plan for share in mb for t, m in zip(share.input_ids_B_T[:, 1], share.loss_mask_B_T[:, 1])
            if m > 0]
    assert sorted(rows) == list(range(10, 20))  # every real row once, padding carries no loss
    for mb in plan:  # per mini-batch the weights sum to 1 (token-mean), split over both ranks
        assert sum(float(share.loss_weights_B_T.sum()) for share in mb) == pytest.approx(1.0)
