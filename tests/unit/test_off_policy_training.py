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


class CountingTrainee(Trainee):
    """Counts forwards by mode; `dropout` as the learner reports it for its model."""

    def __init__(self, cfg, micro_per_rank, horizon, dropout):
        super().__init__(cfg, micro_per_rank, horizon)
        self.dropout, self.forwards = dropout, {True: 0, False: 0}

    def logprobs(self, ids, attn):
        self.forwards[self.model.training] += 1
        return super().logprobs(ids, attn)


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (2, 3)])  # (mini_batches, ppo_epochs)
def test_the_first_mini_batchs_proximal_logprobs_come_from_its_training_forward(shape):
    """Without dropout nothing distinguishes the eval forward before any update from the first mini-batch's training
    forward: train_rank takes the proximal logprobs from the latter, with the same losses and weights, bit for bit,
    as recomputing them all (what a model with dropout still does), and one forward of that mini-batch fewer."""
    mini, epochs = shape
    cfg, algo, batch, layout = setup("rollout.max_staleness=1", f"learner.mini_batches={mini}",
                                     f"learner.ppo_epochs={epochs}", "learner.micro_batch_size=2", "learner.lr=0.5")
    runs = {}
    for dropout in (False, True):
        t = CountingTrainee(cfg, layout.micro_per_rank, algo.lr_horizon(cfg), dropout)
        b = with_behaviour(batch, t, 0.3 * torch.ones_like(batch.loss_mask_B_T, dtype=torch.float32))
        t.forwards = {True: 0, False: 0}
        plan = algo.plan(b, layout, cfg, 0, 0)
        runs[dropout] = t, step_metrics([train_rank(algo, cfg, t, plan.for_rank(0), layout.micro)], plan)
    (fast, fast_m), (full, full_m) = runs[False], runs[True]
    assert fast.losses == full.losses and fast_m == full_m
    assert all(torch.equal(a, b) for a, b in zip(fast.model.parameters(), full.model.parameters()))
    micro_per_mini = layout.micro_per_rank
    assert full.forwards[False] == mini * micro_per_mini  # every mini-batch before any update
    assert fast.forwards[False] == (mini - 1) * micro_per_mini  # all but the first trained
    assert fast.forwards[True] == full.forwards[True] == mini * epochs * micro_per_mini
    assert fast_m["off_policy/is_weight_mean"] != 1.0  # the behaviour policy differed: the correction was at work


def test_dropout_active_on_real_families_and_lora():
    from peft import LoraConfig, get_peft_model
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MixtralConfig,
                              MixtralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    from rlpt.training import dropout_active

    small = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1)
    llama = LlamaForCausalLM(LlamaConfig(**small))
    assert not dropout_active(llama)  # Llama's defaults: attention_dropout 0.0, no dropout module
    assert dropout_active(Qwen2ForCausalLM(Qwen2Config(**small, attention_dropout=0.1)))  # functional: config only
    gpt2 = dict(vocab_size=64, n_embd=16, n_layer=1, n_head=2)
    assert dropout_active(GPT2LMHeadModel(GPT2Config(**gpt2)))  # GPT-2's defaults: resid/embd/attn_pdrop 0.1
    assert not dropout_active(GPT2LMHeadModel(GPT2Config(**gpt2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                                         summary_first_dropout=0.0)))
    moe = dict(small, num_local_experts=2, num_experts_per_tok=1)
    assert not dropout_active(MixtralForCausalLM(MixtralConfig(**moe)))
    assert dropout_active(MixtralForCausalLM(MixtralConfig(**moe, router_jitter_noise=0.1)))  # train-mode noise
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    assert not dropout_active(get_peft_model(LlamaForCausalLM(LlamaConfig(**small)), lora))
    lora_dropout = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
    assert dropout_active(get_peft_model(LlamaForCausalLM(LlamaConfig(**small)), lora_dropout))
