"""Hand-computed checks of the GRPO / DAPO / Dr. GRPO tensor functions (rlpt/algorithms/grpo.py, common.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rlpt.algorithms import ALGORITHMS, grpo
from rlpt.algorithms.common import entropy_from_logits, masked_mean, token_logprobs
from rlpt.algorithms.grpo import (
    GRPOLossConfig,
    aggregate,
    clipped_surrogate,
    group_advantages,
    groups_with_signal,
    grpo_loss,
    k3_kl,
    overlong_penalty,
)

pytestmark = pytest.mark.unit

E = math.e


def test_registry_is_an_explicit_dict() -> None:
    assert set(ALGORITHMS) == {"grpo", "nft", "rft", "dpo", "gspo", "rloo"}
    assert ALGORITHMS["grpo"] is grpo.ALGORITHM and all(a.name == k for k, a in ALGORITHMS.items())


# ---------------------------------------------------------------- advantages


def test_group_advantages_sample_std() -> None:
    # rewards [1, 0, 0, 1]: mean 0.5, deviations +-0.5, sum of squares 4 * 0.25 = 1.
    # sample var = 1 / (4 - 1) = 1/3, std = 0.57735..., A = 0.5 / 0.57735 = sqrt(3)/2 = 0.8660254
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="group", eps=0.0)
    h = math.sqrt(3) / 2
    torch.testing.assert_close(adv, torch.tensor([[h, -h, -h, h]]))
    # with the default eps = 1e-6: A = 0.5 / (0.5773503 + 1e-6) = 0.8660239
    adv_eps = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="group")
    torch.testing.assert_close(adv_eps[0, 0], torch.tensor(0.5 / (1 / math.sqrt(3) + 1e-6)))


def test_group_advantages_population_std() -> None:
    # population var = 1 / 4, std = 0.5, A = 0.5 / 0.5 = 1
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="group", eps=0.0, std="population")
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0, -1.0, 1.0]]))


def test_group_advantages_no_scaling() -> None:
    # row 0: mean 0.5 -> [0.5, -0.5, -0.5, 0.5]; row 1: [3, 1, 2, 2] mean 2 -> [1, -1, 0, 0]
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    adv = group_advantages(rewards, scale="none")
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [1.0, -1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("scale", ["group", "none"])
def test_all_equal_group_gives_exactly_zero_advantage_and_gradient(scale: str) -> None:
    # 0.1 is not representable: the float mean may differ from 0.1 by an ulp, and ulp / eps is not small.
    rewards = torch.tensor([[0.1, 0.1, 0.1], [1.0, 0.0, 1.0]])
    adv_P_G = group_advantages(rewards, scale=scale)  # type: ignore[arg-type]
    assert torch.equal(adv_P_G[0], torch.zeros(3))
    assert groups_with_signal(rewards).tolist() == [False, True]
    # the three rows of group 0 as a batch, 2 response tokens each: no gradient at all
    adv_B_T = adv_P_G[0].unsqueeze(1).expand(3, 2)
    logp = torch.randn(3, 2, requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach() - 0.3, adv_B_T, torch.ones(3, 2), None, GRPOLossConfig())
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros(3, 2))


def test_group_of_one_and_bad_shapes() -> None:
    assert torch.equal(group_advantages(torch.tensor([[1.0], [0.0]]), scale="group"), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        group_advantages(torch.tensor([1.0, 0.0]), scale="group")


# ---------------------------------------------------------------- overlong shaping


def test_overlong_penalty_three_regions() -> None:
    # max_len 10, buffer 4 -> shaping starts after 6; penalty 0.5
    # L=3, 6: 0 | L=7: (6-7)/4*0.5 = -0.125 | L=9: (6-9)/4*0.5 = -0.375 | L=10: -0.5 | L=12 (> max): -0.5
    pen = overlong_penalty(torch.tensor([3, 6, 7, 9, 10, 12]), max_len=10, buffer_len=4, penalty=0.5)
    torch.testing.assert_close(pen, torch.tensor([0.0, 0.0, -0.125, -0.375, -0.5, -0.5]))


def test_overlong_penalty_validates() -> None:
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(torch.tensor([1]), max_len=4, buffer_len=5, penalty=1.0)
    with pytest.raises(ValueError, match="penalty"):
        overlong_penalty(torch.tensor([1]), max_len=4, buffer_len=2, penalty=-1.0)


# ---------------------------------------------------------------- surrogate and KL


def test_ratio_e_positive_advantage_clips_high() -> None:
    # logp - old = 1 -> rho = e = 2.718 > 1 + 0.28; A = 2
    # min(e * 2, 1.28 * 2) = 2.56 -> loss = -2.56, and the clipped branch is constant in logp -> grad 0
    logp = torch.tensor([[1.0]], requires_grad=True)
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([[2.0]]), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([[-2.56]]))
    loss.sum().backward()
    assert clipped.item() is True
    assert logp.grad.item() == 0.0


def test_ratio_e_inverse_negative_advantage_clips_low() -> None:
    # rho = e^-1 = 0.3679 < 1 - 0.2; A = -1
    # min(0.3679 * -1, 0.8 * -1) = min(-0.3679, -0.8) = -0.8 -> loss = 0.8, grad 0
    logp = torch.tensor([[-1.0]], requires_grad=True)
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([[-1.0]]), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([[0.8]]))
    loss.sum().backward()
    assert clipped.item() is True
    assert logp.grad.item() == 0.0


def test_unclipped_sides_keep_gradient() -> None:
    # token 0: rho = 1, A = 2 -> loss -2, d/dlogp (-rho A) = -A rho = -2
    # token 1: rho = e, A = -1 (high side, A < 0 is not clipped) -> min(-e, -1.28) = -e -> loss e, grad e
    logp = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor([[-2.0, E]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0, E]]))
    assert clipped.tolist() == [[False, False]]


def test_k3_values() -> None:
    # d = ref - logp = ln 2: e^d - d - 1 = 2 - 0.693147 - 1 = 0.306853
    # d = -ln 2:             0.5 + 0.693147 - 1 = 0.193147;   d = 0: 0
    ln2 = math.log(2.0)
    kl = k3_kl(torch.tensor([0.0, ln2, -3.0]), torch.tensor([ln2, 0.0, -3.0]))
    torch.testing.assert_close(kl, torch.tensor([1.0 - ln2, ln2 - 0.5, 0.0]))


# ---------------------------------------------------------------- aggregation

LOSS_2x3 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK_2x3 = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_aggregate_modes() -> None:
    # masked tokens: row 0 -> 1, 2; row 1 -> 4
    # token-mean: (1 + 2 + 4) / 3 = 7/3
    # seq-mean-token-mean: row means 1.5 and 4 -> (1.5 + 4) / 2 = 2.75
    # seq-mean-token-sum-norm, norm_len 4: (1 + 2 + 4) / (2 rows * 4) = 0.875
    torch.testing.assert_close(aggregate(LOSS_2x3, MASK_2x3, "token-mean"), torch.tensor(7 / 3))
    torch.testing.assert_close(aggregate(LOSS_2x3, MASK_2x3, "seq-mean-token-mean"), torch.tensor(2.75))
    torch.testing.assert_close(
        aggregate(LOSS_2x3, MASK_2x3, "seq-mean-token-sum-norm", norm_len=4), torch.tensor(0.875)
    )


def test_aggregate_empty_row() -> None:
    # row 1 has no tokens: seq-mean skips it (1.5), token-mean = 3/2, sum-norm still divides by B = 2: 3/8
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert aggregate(LOSS_2x3, mask, "seq-mean-token-mean").item() == 1.5
    assert aggregate(LOSS_2x3, mask, "token-mean").item() == 1.5
    assert aggregate(LOSS_2x3, mask, "seq-mean-token-sum-norm", norm_len=4).item() == 0.375
    assert aggregate(LOSS_2x3, torch.zeros(2, 3), "seq-mean-token-mean").item() == 0.0


def test_sum_norm_requires_norm_len() -> None:
    with pytest.raises(ValueError, match="norm_len"):
        aggregate(LOSS_2x3, MASK_2x3, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="norm_len"):
        GRPOLossConfig(loss_agg="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown mode"):
        aggregate(LOSS_2x3, MASK_2x3, "seq-sum")  # type: ignore[arg-type]


def test_dr_grpo_weight_is_a_constant_per_token() -> None:
    # d loss / d l_{i,t} for the 2x3 mask (row 0 has 2 tokens, row 1 has 1):
    # sum-norm, norm_len 4: 1 / (2 * 4) = 0.125 for every token, whatever the row length
    # seq-mean-token-mean:  row 0: 1 / (2 rows * 2 tokens) = 0.25, row 1: 1 / (2 * 1) = 0.5
    # token-mean:           1 / 3 each
    expected = {
        "seq-mean-token-sum-norm": [[0.125, 0.125, 0.0], [0.125, 0.0, 0.0]],
        "seq-mean-token-mean": [[0.25, 0.25, 0.0], [0.5, 0.0, 0.0]],
        "token-mean": [[1 / 3, 1 / 3, 0.0], [1 / 3, 0.0, 0.0]],
    }
    for mode, grad in expected.items():
        loss = LOSS_2x3.clone().requires_grad_(True)
        aggregate(loss, MASK_2x3, mode, norm_len=4).backward()  # type: ignore[arg-type]
        torch.testing.assert_close(loss.grad, torch.tensor(grad), msg=mode)


# ---------------------------------------------------------------- full loss


def test_grpo_loss_hand_computed() -> None:
    # mask [0, 1, 1]; token 1: rho = 1, A = 1 -> -1; token 2: rho = e, A = 1 -> clipped, -1.28
    # pg (token-mean) = (-1 - 1.28) / 2 = -1.14
    # k3 with ref = 0: token 1 d = 0 -> 0; token 2 d = -1 -> e^-1 + 1 - 1 = 0.367879; mean 0.18394
    # loss = -1.14 + 0.1 * 0.18394 = -1.121606
    logp = torch.tensor([[5.0, 0.0, 1.0]], requires_grad=True)
    old, adv, ref = torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3)
    mask = torch.tensor([[0, 1, 1]])
    loss, stats = grpo_loss(logp, old, adv, mask, ref, GRPOLossConfig(beta=0.1))
    torch.testing.assert_close(loss, torch.tensor(-1.14 + 0.1 * math.exp(-1) / 2))
    assert stats.pg_loss == pytest.approx(-1.14)
    assert stats.kl_mean == pytest.approx(math.exp(-1) / 2)
    assert stats.clip_frac == 0.5 and stats.clip_high_frac == 0.5 and stats.clip_low_frac == 0.0
    assert stats.ratio_mean == pytest.approx((1 + E) / 2)
    assert (stats.ratio_min, stats.ratio_max) == (1.0, pytest.approx(E))
    assert stats.num_tokens == 2.0
    assert "actor/kl_mean" in stats.as_metrics()


def test_grpo_loss_without_reference() -> None:
    logp = torch.zeros(1, 2, requires_grad=True)
    _, stats = grpo_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), None, GRPOLossConfig())
    assert stats.kl_mean is None and "actor/kl_mean" not in stats.as_metrics()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), None, GRPOLossConfig(beta=0.1))


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_masked_tokens_contribute_nothing(agg: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logp0, old, adv, ref = (torch.randn(3, 5, generator=gen) for _ in range(4))
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    cfg = GRPOLossConfig(beta=0.05, loss_agg=agg, norm_len=5)  # type: ignore[arg-type]

    def run(lp: torch.Tensor, o: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> tuple[float, torch.Tensor]:
        leaf = lp.clone().requires_grad_(True)
        loss, _ = grpo_loss(leaf, o, a, mask, r, cfg)
        loss.backward()
        return loss.item(), leaf.grad

    base_loss, base_grad = run(logp0, old, adv, ref)
    off = ~mask.bool()
    poison = [float("nan"), float("inf"), -float("inf"), 1e30]
    for i, value in enumerate(poison):
        bad = [t.masked_fill(off, poison[(i + k) % len(poison)]) for k, t in enumerate((logp0, old, adv, ref))]
        loss, grad = run(*bad)
        assert loss == base_loss, value
        assert torch.equal(grad, base_grad), value
    assert torch.equal(base_grad[off], torch.zeros(int(off.sum())))
    assert math.isfinite(base_loss)


# ---------------------------------------------------------------- logprobs, entropy, masked_mean


def test_token_logprobs_hand_computed() -> None:
    # vocab 2, logits [0, ln 3] -> p = [1/4, 3/4]; ids [0, 1, 0]:
    # pos 1: predicted from logits[0] = [0, ln 3]: log p(1) = ln 0.75
    # pos 2: predicted from logits[1] = [ln 3, 0]: log p(0) = ln 0.75
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [ln3, 0.0], [9.0, 9.0]]])
    out = token_logprobs(logits, torch.tensor([[0, 1, 0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, math.log(0.75), math.log(0.75)]]))


def test_token_logprobs_matches_manual_log_softmax() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 11, generator=gen)
    ids = torch.randint(0, 11, (2, 6), generator=gen)
    manual = torch.zeros(2, 6)
    lsm = torch.log_softmax(logits, dim=-1)
    for b in range(2):
        for t in range(1, 6):
            manual[b, t] = lsm[b, t - 1, ids[b, t]]
    torch.testing.assert_close(token_logprobs(logits, ids), manual)
    # bf16 logits are upcast: float32 output, close to the float32 computation on the same (rounded) logits
    out_bf16 = token_logprobs(logits.bfloat16(), ids)
    assert out_bf16.dtype == torch.float32
    torch.testing.assert_close(out_bf16, token_logprobs(logits.bfloat16().float(), ids))


def _per_row_token_logprobs(logits_B_T_V: torch.Tensor, ids_B_T: torch.Tensor) -> torch.Tensor:
    """The previous implementation (one Python iteration per row), kept as the reference for the vectorised one."""
    rows = []
    for logits_T_V, ids_T in zip(logits_B_T_V, ids_B_T):
        pred = logits_T_V[:-1].float()
        rows.append(torch.gather(pred, -1, ids_T[1:].long().unsqueeze(-1)).squeeze(-1) - torch.logsumexp(pred, -1))
    logp = torch.stack(rows)
    return torch.cat([logp.new_zeros((logp.shape[0], 1)), logp], dim=1)


@pytest.mark.parametrize("chunk_elements", [1, 3 * 7 * 13, 10**9])  # a row per chunk, 3 rows per chunk, one chunk
def test_token_logprobs_vectorised_equals_the_per_row_loop(chunk_elements: int) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 8, 13, generator=gen, requires_grad=True)
    ids = torch.randint(0, 13, (7, 8), generator=gen)
    weights = torch.randn(7, 8, generator=gen)
    want = _per_row_token_logprobs(logits, ids)
    got = token_logprobs(logits, ids, chunk_elements=chunk_elements)
    assert torch.equal(got, want)
    (g_want,) = torch.autograd.grad((want * weights).sum(), logits)
    (g_got,) = torch.autograd.grad((got * weights).sum(), logits)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-6)
    bf16 = logits.detach().bfloat16()
    assert torch.equal(token_logprobs(bf16, ids, chunk_elements=chunk_elements), _per_row_token_logprobs(bf16, ids))


def test_entropy_from_logits() -> None:
    # [0, 0]: uniform over 2 -> ln 2; [0, ln 3]: -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335; [0, -inf]: 0
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, 0.0], [0.0, ln3], [0.0, -float("inf")], [1.0, 1.0]]])
    expected = [0.0, math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), 0.0]
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([expected]))


def test_masked_mean_ignores_nan_and_empty() -> None:
    x = torch.tensor([[1.0, float("nan")], [3.0, 5.0]])
    assert masked_mean(x, torch.tensor([[1, 0], [1, 1]])).item() == 3.0  # (1 + 3 + 5) / 3
    torch.testing.assert_close(masked_mean(x, torch.tensor([[1, 0], [0, 0]]), dim=1), torch.tensor([1.0, 0.0]))
