"""The off-policy correction inside the learner's micro-batch loop (rlpt.training.train_rank) on a plain torch
model: off with K = 0, the decoupled loss equal to GRPO's when the engine sampled from the learner's own policy,
every token's loss multiplied by its hand-computed correction weight otherwise, and the off_policy/* metrics."""

import math
from dataclasses import replace

import pytest
import torch

from rlpt.algorithms import algorithm_of
from rlpt.algorithms.base import Share
from rlpt.config import load_config
from rlpt.training import correction_of, step_metrics, train_rank
from tests.unit.test_algorithm_records import Trainee, scored_group

pytestmark = pytest.mark.unit


def setup(*overrides):
    cfg = load_config(None, ["rollout.prompts_per_step=2", "rollout.samples_per_prompt=4", "run.steps=1",
                             "learner.micro_batch_size=8", "algorithm.grpo.beta=0", *overrides])
    algo = algorithm_of(cfg)
    scored = scored_group("a", [1.0, 0.0, 0.0, 1.0]) + scored_group("b", [1.0, 1.0, 0.0, 0.0])
    batch = algo.online(cfg).build_batch(scored, 0)
    layout = algo.layout(cfg)
    return cfg, algo, batch, layout


def with_behaviour(batch, trainee, shift_B_T=None):
    """The batch with the engine's logprobs set to the learner's own (plus `shift` on response tokens)."""
    with torch.no_grad():
        own = trainee.logprobs(batch.input_ids_B_T, batch.attention_mask_B_T)
    if shift_B_T is not None:
        own = own + shift_B_T * batch.loss_mask_B_T
    return replace(batch, rollout_logprobs_B_T=own)


def one_step(cfg, algo, batch, layout):
    t = Trainee(cfg, layout.micro_per_rank, algo.lr_horizon(cfg))
    batch = with_behaviour(batch, t)
    plan = algo.plan(batch, layout, cfg, 0, 0)
    report = train_rank(algo, cfg, t, plan.for_rank(0), layout.micro)
    return t, report, step_metrics([report], plan)


def test_correction_is_off_in_the_synchronous_loop_and_for_losses_without_a_ratio():
    cfg, algo, _, _ = setup()
    assert correction_of(algo, cfg) is None
    cfg1, algo1, _, _ = setup("rollout.max_staleness=1")
    assert correction_of(algo1, cfg1) is not None
    cfg2, algo2, _, _ = setup("rollout.max_staleness=1", "learner.off_policy.correction=none")
    assert correction_of(algo2, cfg2) is None
    cfg3, algo3, _, _ = setup("rollout.max_staleness=1", "algorithm.name=rft")
    assert correction_of(algo3, cfg3) is None  # SFT on kept samples: no ratio to correct


def test_on_policy_samples_train_exactly_like_the_synchronous_loop():
    # behaviour == proximal: every weight is 1, so the decoupled loss is GRPO's clipped surrogate exactly
    sync_t, _, sync_m = one_step(*setup())
    async_t, _, async_m = one_step(*setup("rollout.max_staleness=1"))
    assert async_t.losses == sync_t.losses
    for a, b in zip(async_t.model.parameters(), sync_t.model.parameters()):
        assert torch.equal(a, b)
    assert "off_policy/is_weight_mean" not in sync_m
    assert async_m["off_policy/is_weight_mean"] == pytest.approx(1.0)
    assert async_m["off_policy/corrected_frac"] == 0.0 and async_m["off_policy/behaviour_kl"] == pytest.approx(0.0)


@pytest.mark.parametrize("correction", ["tis", "token_mask"])
def test_each_tokens_loss_is_weighted_by_its_correction(correction):
    cfg, algo, batch, layout = setup("rollout.max_staleness=2", f"learner.off_policy.correction={correction}",
                                     "learner.off_policy.cap=2.0", "learner.off_policy.trust_region=false")
    t = Trainee(cfg, layout.micro_per_rank, algo.lr_horizon(cfg))
    # behaviour logprob lower by log 4 on the first response token of every row (w = 4), equal elsewhere (w = 1)
    mask = batch.loss_mask_B_T.bool()
    first = mask & (mask.cumsum(dim=1) == 1)
    shift = torch.where(first, torch.tensor(-math.log(4.0)), torch.tensor(0.0))
    batch = with_behaviour(batch, t, shift)
    plan = algo.plan(batch, layout, cfg, 0, 0)
    # the expected loss: GRPO's per-token loss (ratio 1 vs the proximal) times c_t, c = 2 (tis) or 0 (masked)
    c = 2.0 if correction == "tis" else 0.0
    share = plan.for_rank(0).mini_batches[0][0]
    expected_weights = share.rows.loss_weights_B_T * torch.where(first, torch.tensor(c), torch.tensor(1.0))
    with torch.no_grad():
        logp = t.logprobs(share.rows.input_ids_B_T, share.rows.attention_mask_B_T)
    expected, _ = algo.loss(logp, logp, Share(replace(share.rows, loss_weights_B_T=expected_weights)), cfg)
    report = train_rank(algo, cfg, t, plan.for_rank(0), layout.micro)
    assert t.losses[0] == pytest.approx(float(expected), rel=1e-6)
    m = step_metrics([report], plan)
    n_rows, n_tok = int(first.sum()), int(mask.sum())
    assert m["off_policy/is_weight_max"] == pytest.approx(4.0, rel=1e-5)
    assert m["off_policy/is_weight_mean"] == pytest.approx((4.0 * n_rows + (n_tok - n_rows)) / n_tok, rel=1e-5)
    assert m["off_policy/corrected_frac"] == pytest.approx(n_rows / n_tok)
    kl = 4.0 - 1.0 - math.log(4.0)  # k3 at w = 4; 0 at w = 1
    assert m["off_policy/behaviour_kl"] == pytest.approx(kl * n_rows / n_tok, rel=1e-5)


def test_the_trust_region_gives_no_gradient_to_tokens_already_moved_past_the_clip():
    cfg, algo, batch, layout = setup("rollout.max_staleness=1", "learner.off_policy.cap=2.0")
    t = Trainee(cfg, layout.micro_per_rank, algo.lr_horizon(cfg))
    mask = batch.loss_mask_B_T.bool()
    first = mask & (mask.cumsum(dim=1) == 1)
    # w = 1.5 on every row's first token: past 1 + 0.28 for A > 0 (no gradient), inside for A < 0 (weight 1.5)
    batch = with_behaviour(batch, t, torch.where(first, torch.tensor(-math.log(1.5)), torch.tensor(0.0)))
    plan = algo.plan(batch, layout, cfg, 0, 0)
    share = plan.for_rank(0).mini_batches[0][0]
    adv = share.rows.advantages_B_T
    w = torch.where(first, torch.where(adv > 0, torch.tensor(0.0), torch.tensor(1.5)), torch.tensor(1.0))
    with torch.no_grad():
        logp = t.logprobs(share.rows.input_ids_B_T, share.rows.attention_mask_B_T)
    expected, _ = algo.loss(logp, logp, Share(replace(share.rows, loss_weights_B_T=share.rows.loss_weights_B_T * w)),
                            cfg)
    report = train_rank(algo, cfg, t, plan.for_rank(0), layout.micro)
    assert t.losses[0] == pytest.approx(float(expected), rel=1e-6)
    moved = int((first & (adv > 0)).sum())
    assert moved > 0 and step_metrics([report], plan)["off_policy/corrected_frac"] == pytest.approx(
        moved / int(mask.sum()))
