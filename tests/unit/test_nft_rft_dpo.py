"""Hand-computed and equivalence tests for NFT, RFT and DPO losses."""

import math
import random

import pytest
import torch

from rlpt.algorithms.dpo import dpo_loss, pair_up, winner_nll
from rlpt.algorithms.grpo import GRPOLossConfig, grpo_token_loss, group_advantages
from rlpt.algorithms.nft import NFTLossConfig, max_keep_grad, nft_token_loss, prompt_weight
from rlpt.algorithms.rft import dedup_correct, quotas, sft_token_loss
from rlpt.batching import aggregation_weights
from rlpt.types import Prompt, Rollout, ScoredRollout

pytestmark = pytest.mark.unit


def grads(loss_fn, logp):
    x = logp.clone().requires_grad_(True)
    loss_fn(x).backward()
    return x.grad


def random_case(seed, P=3, G=4, T=5):
    g = torch.Generator().manual_seed(seed)
    correct = torch.zeros(P, G)
    for p in range(P):  # 0 < r_hat < 1 in every group (NFT's filter)
        k = int(torch.randint(1, G, (1,), generator=g))
        correct[p, torch.randperm(G, generator=g)[:k]] = 1.0
    logp = -torch.rand(P * G, T, generator=g) * 3
    mask = (torch.rand(P * G, T, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    return correct, logp, mask


# ------------------------------------------------------------------------------------------------ NFT
def test_nft_hand_computed_values():
    # rq = 0.25, R = 1 at the token: positive loss -log 1 = 0; negative -log((1 - 0.25)/(1 - 0.25)) = 0.
    # With logp - old = log 2 (R = 2): positive -log 2; negative proxy (1 - 0.5)/0.75 = 2/3 < eps = 1 -> value
    # floored to 1 -> loss 0; with eps = 0.1 -> -log(2/3) = 0.405465. normalize=1 weight 0.75.
    logp = torch.tensor([[math.log(2.0)], [math.log(2.0)]])
    old = torch.zeros(2, 1)
    pos, rhat, mask = torch.tensor([1.0, 0.0]), torch.tensor([0.25, 0.25]), torch.ones(2, 1)
    out = nft_token_loss(logp, old, pos, rhat, mask, NFTLossConfig(normalize=1, neg_clamp=1.0))
    assert out.loss_B_T[:, 0].tolist() == pytest.approx([-0.75 * math.log(2.0), 0.0])
    out = nft_token_loss(logp, old, pos, rhat, mask, NFTLossConfig(normalize=0, neg_clamp=0.1))
    assert out.loss_B_T[1, 0].item() == pytest.approx(-math.log(2 / 3))
    assert prompt_weight(torch.tensor([0.25]), 2).item() == pytest.approx(math.sqrt(3.0))


def test_max_keep_grad_floors_value_not_gradient():
    x = torch.tensor([0.5, 3.0], requires_grad=True)
    y = max_keep_grad(x, 1.0)
    (y * torch.tensor([2.0, 5.0])).sum().backward()
    assert y.tolist() == [1.0, 3.0] and x.grad.tolist() == [2.0, 5.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nft_normalize1_equals_dr_grpo_gradient_on_policy(seed):
    correct, logp, mask = random_case(seed)
    old = logp.detach()  # strictly on-policy: R = 1
    G = correct.shape[1]
    rhat = correct.mean(dim=1).repeat_interleave(G)
    w = aggregation_weights(mask, "seq-mean-token-sum-norm", 5)
    nft = grads(lambda x: (nft_token_loss(x, old, correct.flatten(), rhat, mask, NFTLossConfig(1)).loss_B_T * w).sum(),
                logp)
    adv = (group_advantages(correct, "none").flatten()[:, None] * mask)
    cfg = GRPOLossConfig(eps_low=0.2, eps_high=0.2, loss_agg="seq-mean-token-sum-norm", norm_len=5)
    drgrpo = grads(lambda x: (grpo_token_loss(x, old, adv, mask, None, cfg).loss_B_T * w).sum(), logp)
    torch.testing.assert_close(nft, drgrpo, rtol=1e-5, atol=1e-7)
    assert nft.abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_nft_normalize2_equals_grpo_population_std_gradient(seed):
    correct, logp, mask = random_case(seed)
    old = logp.detach()
    G = correct.shape[1]
    rhat = correct.mean(dim=1).repeat_interleave(G)
    w = aggregation_weights(mask, "seq-mean-token-sum-norm", 5)
    nft = grads(lambda x: (nft_token_loss(x, old, correct.flatten(), rhat, mask, NFTLossConfig(2)).loss_B_T * w).sum(),
                logp)
    adv = group_advantages(correct, "group", eps=0.0, std="population").flatten()[:, None] * mask
    cfg = GRPOLossConfig(eps_low=0.2, eps_high=0.2, loss_agg="seq-mean-token-sum-norm", norm_len=5)
    grpo = grads(lambda x: (grpo_token_loss(x, old, adv, mask, None, cfg).loss_B_T * w).sum(), logp)
    torch.testing.assert_close(nft, grpo, rtol=1e-5, atol=1e-7)


def test_nft_neg_weight_zero_is_weighted_sft_on_positives():
    correct, logp, mask = random_case(5)
    old = logp.detach()
    G = correct.shape[1]
    rhat = correct.mean(dim=1).repeat_interleave(G)
    pos = correct.flatten()
    nft = grads(lambda x: nft_token_loss(x, old, pos, rhat, mask, NFTLossConfig(1, neg_weight=0.0)).loss_B_T.sum(),
                logp)
    wq = (1 - rhat.clamp(0.02, 0.98))[:, None]
    sft = grads(lambda x: (sft_token_loss(x, mask).loss_B_T * wq * pos[:, None]).sum(), logp)
    torch.testing.assert_close(nft, sft)


def test_zero_variance_groups_give_zero_gradient():
    logp = -torch.rand(4, 3)
    mask = torch.ones(4, 3)
    for r in (0.0, 1.0):
        correct = torch.full((1, 4), r)
        adv = group_advantages(correct, "group").flatten()[:, None] * mask
        g = grads(lambda x: grpo_token_loss(x, x.detach(), adv, mask, None, GRPOLossConfig()).loss_B_T.sum(), logp)
        assert g.abs().sum() == 0
    # NFT's clamp of rq to [0.02, 0.98] would give such groups a small nonzero gradient: NFT filters them instead.
    from rlpt.algorithms.nft import has_signal
    assert has_signal(torch.tensor([0.0, 0.5, 1.0])).tolist() == [False, True, False]


# ------------------------------------------------------------------------------------------------ RFT
def mk(uid, resp, correct):
    p = Prompt(uid=uid, text=uid, answer="1", prompt_ids=(1,))
    return ScoredRollout(Rollout(p, 0, tuple(resp), (-1.0,) * len(resp), "", "stop", 0), float(correct), correct)


def test_rft_dedup_keeps_first_correct_per_prompt_and_response():
    s = [mk("a", [1], True), mk("a", [1], True), mk("a", [2], True), mk("a", [3], False), mk("b", [1], True)]
    assert [(x.rollout.prompt.uid, x.rollout.response_ids_T) for x in dedup_correct(s)] == [("a", (1,)), ("a", (2,)),
                                                                                              ("b", (1,))]


def test_sft_loss_is_masked_nll():
    logp = torch.tensor([[-9.0, -1.0, -2.0]])
    out = sft_token_loss(logp, torch.tensor([[0.0, 1.0, 1.0]]))
    assert out.loss_B_T.tolist() == [[0.0, 1.0, 2.0]]


def test_quotas():
    assert quotas([0.2, 0.2], 3, "uniform") == [3, 3]
    assert quotas([0.1, 0.3], 2, "prop2diff") == [1, 3]  # mean 0.2: 2*0.5=1, 2*1.5=3
    assert quotas([0.0, 0.0], 2, "prop2diff") == [1, 1]


# ------------------------------------------------------------------------------------------------ DPO
def test_dpo_loss_is_log2_at_init_and_hand_computed():
    x = torch.tensor([-3.0, -1.5])
    loss, m = dpo_loss(x, x - 1, x, x - 1, beta=0.1)
    assert loss.tolist() == pytest.approx([math.log(2)] * 2) and m.tolist() == [0.0, 0.0]
    # chosen up by 1 vs ref, rejected down by 1: m = 2, beta 0.5 -> -log sigmoid(1) = 0.313262
    loss, m = dpo_loss(torch.tensor([0.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), 0.5)
    assert m.item() == 2.0 and loss.item() == pytest.approx(0.3132617)
    # label smoothing 0.1: 0.9 * 0.313262 + 0.1 * -log sigmoid(-1) (= 1.313262) = 0.413262
    loss, _ = dpo_loss(torch.tensor([0.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), 0.5, 0.1)
    assert loss.item() == pytest.approx(0.4132617)
    assert winner_nll(torch.tensor([-6.0]), torch.tensor([3])).item() == 2.0


def test_pairing_best_worst_random_and_skips():
    g1 = [mk("a", [1, 2], True), mk("a", [1], True), mk("a", [5], False), mk("a", [5, 6], False)]
    g2 = [mk("b", [1], True)] * 4  # no contrast
    pairs, skipped = pair_up(g1 + g2, 4, "best_worst", random.Random(0))
    assert skipped == 1 and len(pairs) == 1
    assert pairs[0].chosen.response_ids_T == (1,) and pairs[0].rejected.response_ids_T == (5, 6)
    pairs, _ = pair_up(g1, 4, "random", random.Random(0))
    assert pairs[0].chosen.prompt.uid == "a" and pairs[0].rejected in [s.rollout for s in g1[2:]]
