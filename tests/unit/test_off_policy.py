"""Off-policy correction (rlpt/algorithms/off_policy.py), against values computed by hand."""

import math

import pytest
import torch

from rlpt.algorithms.grpo import clipped_surrogate
from rlpt.algorithms.off_policy import (CORRECTIONS, behaviour_kl, decoupled_surrogate, log_is_weights,
                                        off_policy_stats, sequence_masked, token_masked, truncated, within_bound)

pytestmark = pytest.mark.unit

L2 = math.log(2.0)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_log_is_weights_are_prox_minus_behaviour_on_response_tokens_only():
    prox = t([[-1.0, -0.5, -2.0]])
    behav = t([[-1.0 - L2, -0.5 + L2, float("-inf")]])  # padding may hold anything, even -inf
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(log_is_weights(prox, behav, mask), t([[L2, -L2, 0.0]]))


def test_truncated_caps_weights_at_c():
    log_w = t([[L2, -L2, 2 * L2], [3 * L2, 0.0, 0.0]])  # w = 2, 0.5, 4 | 8, 1, (masked)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    c = truncated(log_w, mask, cap=3.0)
    torch.testing.assert_close(c.weight_B_T, t([[2.0, 0.5, 3.0], [3.0, 1.0, 0.0]]))
    assert c.changed_B_T.tolist() == [[False, False, True], [True, False, False]]


def test_token_mask_rejects_weights_outside_one_over_c_to_c():
    log_w = t([[L2, -L2, 2 * L2, -2 * L2]])  # w = 2, 0.5, 4, 0.25 with C = 3: keep 2 and 0.5
    c = token_masked(log_w, torch.ones(1, 4, dtype=torch.bool), cap=3.0)
    torch.testing.assert_close(c.weight_B_T, t([[2.0, 0.5, 0.0, 0.0]]))
    assert c.changed_B_T.tolist() == [[False, False, True, True]]


def test_sequence_mask_uses_the_geometric_mean_of_the_row():
    # row 0: w = 4, 0.25 -> geometric mean 1: kept, each token keeps its own w (4 and 0.25, outside [1/3, 3])
    # row 1: w = 4, 4 -> geometric mean 4 > 3: the whole row is rejected
    # row 2: w = 2, (masked 8) -> mean over its one response token: 2 <= 3, kept
    # row 3: no response tokens: never rejected, weight 0 everywhere
    log_w = t([[2 * L2, -2 * L2], [2 * L2, 2 * L2], [L2, 3 * L2], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, True], [True, False], [False, False]])
    c = sequence_masked(log_w * mask, mask, cap=3.0)
    torch.testing.assert_close(c.weight_B_T, t([[4.0, 0.25], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]))
    assert c.changed_B_T.tolist() == [[False, False], [True, True], [False, False], [False, False]]


@pytest.mark.parametrize("name", sorted(CORRECTIONS))
def test_a_cap_of_one_or_less_is_refused(name):
    with pytest.raises(ValueError, match="must be > 1"):
        CORRECTIONS[name](t([[0.0]]), torch.ones(1, 1, dtype=torch.bool), 1.0)


def test_decoupled_surrogate_clips_against_the_proximal_policy_and_weights_by_c():
    # rho = exp(l - p) = 1.5 > 1 + 0.28 with A = 1: the clipped branch, -1.28 * A; weight c = 2 -> -2.56.
    # second token: rho = 1.1 inside the clip, A = -1: -(1.1 * -1) = 1.1; c = 0.5 -> 0.55.
    prox = t([[-1.0, -2.0]])
    logp = prox + t([[math.log(1.5), math.log(1.1)]])
    logp.requires_grad_(True)
    adv, weight = t([[1.0, -1.0]]), t([[2.0, 0.5]])
    loss, clipped = decoupled_surrogate(logp, prox, adv, weight, eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(loss, t([[-2.56, 0.55]]))
    assert clipped.tolist() == [[True, False]]
    loss.sum().backward()
    # d/dl of -c * rho * A = -c * rho * A: 0 on the clipped token, -(0.5 * 1.1 * -1) = 0.55 on the other
    torch.testing.assert_close(logp.grad, t([[0.0, 0.55]]))


def test_on_policy_weights_give_the_grpo_surrogate_exactly():
    g = torch.Generator().manual_seed(0)
    prox, adv = -torch.rand(3, 5, generator=g) * 3, torch.randn(3, 5, generator=g)
    logp = prox + 0.3 * torch.randn(3, 5, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    log_w = log_is_weights(prox, prox, mask)  # behaviour == proximal
    for name, correct in CORRECTIONS.items():
        c = correct(log_w, mask, 2.0)
        assert not c.changed_B_T.any(), name
        got, _ = decoupled_surrogate(logp, prox, adv, c.weight_B_T, 0.2, 0.28)
        want, _ = clipped_surrogate(logp, prox, adv, 0.2, 0.28)
        assert torch.equal(got, want), name


def test_behaviour_kl_is_k3():
    # w = 2: 2 - 1 - ln 2 = 0.306853; w = 0.5: 0.5 - 1 + ln 2 = 0.193147; w = 1: 0
    torch.testing.assert_close(behaviour_kl(t([[L2, -L2, 0.0]])), t([[1 - L2, L2 - 0.5, 0.0]]))


def test_staleness_bound_is_strict_and_counts_the_oldest_token():
    oldest = torch.tensor([5, 4, 3, 2])
    assert within_bound(5, oldest, 0).tolist() == [True, False, False, False]
    assert within_bound(5, oldest, 2).tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="newer than the learner"):
        within_bound(5, torch.tensor([6]), 1)


def test_stats_over_response_tokens():
    log_w = t([[L2, -L2], [2 * L2, 0.0]])  # response tokens: w = 2, 0.5, 4 (the last position is padding)
    mask = torch.tensor([[True, True], [True, False]])
    c = truncated(log_w, mask, cap=3.0)
    s = off_policy_stats(7, torch.tensor([6, 5]), log_w, c, mask)
    assert s.staleness_mean == 1.5 and s.staleness_max == 2.0
    assert s.is_weight_mean == pytest.approx(6.5 / 3) and s.is_weight_max == pytest.approx(4.0)
    assert s.corrected_frac == pytest.approx(1 / 3)
    assert s.behaviour_kl == pytest.approx(((1 - L2) + (L2 - 0.5) + (3 - 2 * L2)) / 3)
    assert set(s.as_metrics()) == {"off_policy/staleness_mean", "off_policy/staleness_max",
                                   "off_policy/is_weight_mean", "off_policy/is_weight_max",
                                   "off_policy/corrected_frac", "off_policy/behaviour_kl"}
    none = torch.zeros(1, 1, dtype=torch.bool)
    empty = off_policy_stats(3, torch.tensor([], dtype=torch.long), t([[0.0]]), truncated(t([[0.0]]), none, 3.0), none)
    assert (empty.is_weight_mean, empty.corrected_frac, empty.behaviour_kl, empty.staleness_max) == (1.0, 0.0, 0.0, 0.0)
