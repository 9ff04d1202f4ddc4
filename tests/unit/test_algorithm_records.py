"""The Algorithm records and the learner's generic micro-batch loop (rlpt.training), on a plain torch model:
optimizer steps and LR horizons per algorithm and loop, the distributed loss equal to the full-batch loss,
GSPO and RLOO hand-computed, and no `algorithm.name` comparison outside rlpt/algorithms/."""

import math
import re
from pathlib import Path

import pytest
import torch

from rlpt.algorithms import ALGORITHMS, algorithm_of
from rlpt.algorithms.base import LoopKind, ReferenceUse, Share
from rlpt.algorithms.common import token_logprobs
from rlpt.algorithms.grpo import GRPOLossConfig, grpo_loss
from rlpt.algorithms.gspo import gspo_token_loss, sequence_log_ratio
from rlpt.algorithms.rloo import leave_one_out_advantages, rloo_token_loss
from rlpt.batching import pair_rows, token_rows
from rlpt.config import load_config
from rlpt.schedule import lr_multiplier
from rlpt.training import step_metrics, train_rank
from rlpt.types import PreferencePair, Prompt, Rollout, ScoredRollout

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- a tiny trainee (plain torch, counts optimizer steps)
class TinyLM(torch.nn.Module):
    def __init__(self, vocab=8, dim=4):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out = torch.nn.Embedding(vocab, dim), torch.nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)))


class Trainee:
    """rlpt.training.Trainee over a torch optimizer: steps once per `micro_per_rank` micro-batches, as DeepSpeed's
    gradient accumulation does, with the configured LR schedule."""

    dropout = False

    def __init__(self, cfg, micro_per_rank, horizon):
        self.model = TinyLM()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.learner.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_multiplier(cfg.learner, horizon, s))
        self.micro_per_rank, self.calls, self.steps, self.losses = micro_per_rank, 0, 0, []

    def logprobs(self, ids, attn):
        return token_logprobs(self.model(ids), ids)

    def set_train(self, train):
        self.model.train(train)

    def backward_step(self, loss):
        self.losses.append(float(loss.detach()))
        loss.backward()
        self.calls += 1
        if self.calls % self.micro_per_rank == 0:
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad()
            self.steps += 1

    def grad_norm(self):
        return 0.0

    def lr(self):
        return self.sched.get_last_lr()[0]

    def optimizer_steps(self):
        return self.steps


def scored_group(uid, rewards, resp_len=2):
    p = Prompt(uid=uid, text=uid, answer="1", prompt_ids=(1, 2))
    return [ScoredRollout(Rollout(p, i, tuple(range(3, 3 + resp_len - (i % 2))), (-1.0,) * (resp_len - (i % 2)),
                                  "", "stop", 0), reward=r, correct=r > 0) for i, r in enumerate(rewards)]


ONLINE = {"grpo": [], "nft": ["algorithm.name=nft"], "rft": ["algorithm.name=rft"],
          "gspo": ["algorithm.name=gspo"], "rloo": ["algorithm.name=rloo"]}


@pytest.mark.parametrize("name", list(ONLINE))
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 2)])  # (mini_batches, ppo_epochs, ranks)
def test_online_step_takes_the_planned_optimizer_steps(name, shape):
    mini, epochs, ranks = shape
    cfg = load_config(None, [*ONLINE[name], "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4",
                             f"learner.mini_batches={mini}", f"learner.ppo_epochs={epochs}",
                             f"learner.num_ranks={ranks}", "learner.micro_batch_size=1", "run.steps=3",
                             "learner.lr_schedule=linear"])
    algo = algorithm_of(cfg)
    assert algo.loop(cfg) is LoopKind.ONLINE
    scored = scored_group("a", [1.0, 0.0, 0.0, 1.0]) + scored_group("b", [1.0, 1.0, 0.0, 0.0])
    batch = algo.online(cfg).build_batch(scored, 0)
    layout = algo.layout(cfg)
    trainees = [Trainee(cfg, layout.micro_per_rank, algo.lr_horizon(cfg)) for _ in range(ranks)]
    for step in range(cfg.run.steps):
        plan = algo.plan(batch, layout, cfg, 0, step)
        assert plan.optimizer_steps == algo.optimizer_steps_per_update(cfg) == mini * epochs
        reports = [train_rank(algo, cfg, t, plan.for_rank(k), layout.micro) for k, t in enumerate(trainees)]
        metrics = step_metrics(reports, plan)
    # the run really took lr_horizon optimizer steps, and a linear schedule ends at exactly 0 there
    assert all(t.steps == algo.lr_horizon(cfg) == 3 * mini * epochs for t in trainees)
    assert metrics["learner/optimizer_steps"] == algo.lr_horizon(cfg) and metrics["actor/lr"] == 0.0


def test_lr_horizon_is_the_runs_optimizer_steps_for_every_loop():
    # hand-computed: steps (rounds) x learner updates per step x mini-batches x epochs
    cases = {
        "grpo cosine": (["learner.lr_schedule=cosine", "run.steps=10", "learner.mini_batches=2"], 10 * 2),
        "grpo ppo_epochs": (["run.steps=10", "learner.ppo_epochs=3"], 10 * 3),  # main had 10 * 4 (dpo/rft epochs)
        "nft": (["algorithm.name=nft", "run.steps=7"], 7),
        "rft online": (["algorithm.name=rft", "run.steps=5"], 5),
        # 128 prompts x k=2 = 256 rows max, 16 x 16 = 256 rows per update: 1 update per epoch, 4 epochs, 10 rounds
        "rft rounds": (["algorithm.name=rft", "algorithm.rft.mode=rounds"], 10 * 4),
        # prop2diff: at most 128 x 3 = 384 rows -> 2 updates per epoch
        "rft prop2diff": (["algorithm.name=rft", "algorithm.rft.mode=rounds", "algorithm.rft.quota=prop2diff"],
                          10 * 4 * 2),
        # restart: base rebuilds the optimizer each round: one schedule spans one round
        "rft restart base": (["algorithm.name=rft", "algorithm.rft.mode=rounds", "algorithm.rft.restart=base"], 4),
        "dpo": (["algorithm.name=dpo", "algorithm.dpo.rounds=6", "algorithm.dpo.epochs=2",
                 "learner.mini_batches=3"], 6 * 2 * 3),
        "gspo": (["algorithm.name=gspo", "run.steps=9"], 9),
        "rloo": (["algorithm.name=rloo", "run.steps=9", "learner.ppo_epochs=2"], 18),
    }
    for what, (overrides, want) in cases.items():
        cfg = load_config(None, overrides)
        assert algorithm_of(cfg).lr_horizon(cfg) == want, what


def test_dpo_plan_epochs_each_shuffle_and_take_their_optimizer_steps():
    cfg = load_config(None, ["algorithm.name=dpo", "algorithm.dpo.epochs=3", "algorithm.dpo.prompts_per_round=4",
                             "learner.mini_batches=2", "learner.micro_batch_size=2", "algorithm.dpo.rounds=2"])
    algo = algorithm_of(cfg)
    assert algo.loop(cfg) is LoopKind.PAIR_ROUNDS and algo.reference(cfg) is ReferenceUse.FOLLOWS_POLICY
    pairs = []
    for g in range(4):
        a, b = scored_group(f"p{g}", [1.0, 0.0], resp_len=2 + g)
        pairs.append(PreferencePair(a.rollout.prompt, a.rollout, b.rollout))
    batch = pair_rows(pairs, pad_id=0)
    batch = type(batch)(**{**batch.__dict__, "ref_logprobs_B_T": torch.zeros(batch.input_ids_B_T.shape)})
    layout = algo.layout(cfg)
    t = Trainee(cfg, layout.micro_per_rank, algo.lr_horizon(cfg))
    for rnd in range(2):
        plan = algo.plan(batch, layout, cfg, 0, rnd)
        assert plan.passes == 3 and plan.optimizer_steps == 3 * 2
        assert sorted(s[0].norm for s in plan.mini_batches) == [2.0] * 6  # 4 real pairs over 2 mini-batches
        metrics = step_metrics([train_rank(algo, cfg, t, plan.for_rank(0), layout.micro)], plan)
    assert t.steps == algo.lr_horizon(cfg) == 2 * 3 * 2
    assert metrics["dpo/accuracy"] >= 0.0 and "actor/loss" not in metrics


def test_distributed_micro_batch_losses_add_up_to_the_full_batch_loss():
    """GRPO token-mean over 2 ranks x micro-batches of 1 row: the sum of every micro-batch loss (what the ranks
    backpropagate, times K and averaged over K) equals the full-batch `grpo_loss`."""
    cfg = load_config(None, ["rollout.prompts_per_step=2", "rollout.samples_per_prompt=4", "learner.num_ranks=2",
                             "learner.micro_batch_size=1", "algorithm.grpo.beta=0"])
    algo = algorithm_of(cfg)
    scored = scored_group("a", [1.0, 0.0, 0.0, 1.0]) + scored_group("b", [1.0, 1.0, 0.0, 0.0])
    batch = algo.online(cfg).build_batch(scored, 0)
    model = TinyLM()
    with torch.no_grad():
        logp = token_logprobs(model(batch.input_ids_B_T), batch.input_ids_B_T)
    old = logp - 0.1 * torch.arange(batch.input_ids_B_T.numel()).view_as(logp) / logp.numel()
    full, _ = grpo_loss(logp, old, batch.advantages_B_T, batch.loss_mask_B_T, None, GRPOLossConfig(beta=0.0))
    plan = algo.plan(type(batch)(**{**batch.__dict__, "rollout_logprobs_B_T": old}), algo.layout(cfg), cfg, 0, 0)
    total = 0.0
    for share in (s for mb in plan.mini_batches for s in mb):
        rows = share.rows
        with torch.no_grad():
            lp = token_logprobs(model(rows.input_ids_B_T), rows.input_ids_B_T)
        total += float(algo.loss(lp, rows.rollout_logprobs_B_T, share, cfg)[0])
    assert total == pytest.approx(float(full), abs=1e-6)  # float32 sums of terms of both signs


# ---------------------------------------------------------------- GSPO and RLOO, hand-computed
def test_gspo_sequence_ratio_clip_and_loss_hand_computed():
    # row 0: 2 tokens, log ratios 0.2 and 0.0 -> log s = 0.1, s = e^0.1 = 1.10517; A = +1: clipped at 1 + 0.0004
    #   -> l = -min(1.10517, 1.0004) = -1.0004 (constant in theta: no gradient)
    # row 1: 1 token, log ratio -0.001 -> s = 0.9990005; A = -1: clip(s) = 1 - 0.0003 -> -min(-0.999, -0.9997) = 0.9997
    logp = torch.tensor([[0.0, -1.0, -2.0], [0.0, -1.001, 0.0]], requires_grad=True)
    old = torch.tensor([[0.0, -1.2, -2.0], [0.0, -1.0, 0.0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    assert sequence_log_ratio(logp, old, mask).tolist() == pytest.approx([0.1, -0.001], abs=1e-6)
    t = gspo_token_loss(logp, old, torch.tensor([1.0, -1.0]), mask, 3e-4, 4e-4)
    assert t.loss_B_T[0, 1:].tolist() == pytest.approx([-1.0004, -1.0004], abs=1e-6)
    assert t.loss_B_T[1, 1].item() == pytest.approx(0.9997, abs=1e-6) and t.loss_B_T[1, 2].item() == 0.0
    assert t.clipped_B_T.tolist() == [[False, True, True], [False, True, False]]
    # unclipped: s = 1 exactly (on-policy) -> d l_i / d logp_t = -A_i * s / |o_i|
    on = gspo_token_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), mask, 3e-4, 4e-4)
    (on.loss_B_T[:, 1]).sum().backward()  # one token of each row carries l_i (seq-mean weights do this)
    assert logp.grad[0, 1:].tolist() == pytest.approx([-0.5, -0.5]) and logp.grad[1, 1].item() == pytest.approx(1.0)


def test_rloo_leave_one_out_baseline_and_gradient():
    # rewards [1, 0, 0]: baselines (0+0)/2 = 0, (1+0)/2 = 0.5, 0.5 -> A = [1, -0.5, -0.5]; sum(A) = 0
    adv = leave_one_out_advantages(torch.tensor([[1.0, 0.0, 0.0]]))
    assert adv.tolist() == [[1.0, -0.5, -0.5]]
    assert leave_one_out_advantages(torch.tensor([[3.0]])).tolist() == [[0.0]]  # no baseline for a group of one
    # equals G/(G-1) (r - mean): 3/2 * (1 - 1/3) = 1
    # on-policy (rho = 1): d(-rho A)/d logp = -A per token
    logp = torch.tensor([[0.0, -0.5, -0.7]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1]])
    adv_B_T = torch.tensor([[0.0, -0.5, -0.5]])
    t = rloo_token_loss(logp, logp.detach(), adv_B_T, mask, 0.2, 0.28)
    t.loss_B_T.sum().backward()
    assert logp.grad.tolist() == [[0.0, 0.5, 0.5]] and t.loss_B_T.tolist() == [[0.0, 0.5, 0.5]]


def test_rloo_batch_puts_the_baseline_on_every_response_token():
    cfg = load_config(None, ["algorithm.name=rloo", "rollout.samples_per_prompt=4"])
    batch = algorithm_of(cfg).online(cfg).build_batch(scored_group("a", [1.0, 0.0, 0.0, 1.0]), 0)
    # A = r - mean(others): 1 - 1/3 = 2/3, 0 - 2/3 = -2/3
    want = [2 / 3, -2 / 3, -2 / 3, 2 / 3]
    for b in range(4):
        m = batch.loss_mask_B_T[b].bool()
        assert batch.advantages_B_T[b][m].tolist() == pytest.approx([want[b]] * int(m.sum()))


# ---------------------------------------------------------------- the extension point stays closed
NAME_COMPARISON = re.compile(r"algorithm\.name\s*(==|!=|\bin\b|\bnot in\b)|[=!]=\s*cfg\.algorithm\.name")


def test_no_algorithm_name_comparison_outside_the_algorithms_package():
    offenders = []
    for path in [*ROOT.glob("rlpt/**/*.py"), *ROOT.glob("actors/**/*.py")]:
        if path.parent.name == "algorithms":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if NAME_COMPARISON.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_the_grep_catches_a_comparison():
    assert NAME_COMPARISON.search('if cfg.algorithm.name == "dpo":')
    assert NAME_COMPARISON.search("x = cfg.algorithm.name in ('a', 'b')")
    assert not NAME_COMPARISON.search("algo = ALGORITHMS[cfg.algorithm.name]")


def test_every_algorithm_has_a_tiny_config_and_its_loops_hooks():
    for name, algo in ALGORITHMS.items():
        cfg = load_config(None, [f"algorithm.name={name}"])
        hooks = {LoopKind.ONLINE: algo.online, LoopKind.QUOTA_ROUNDS: algo.quota, LoopKind.PAIR_ROUNDS: algo.pairs}
        assert hooks[algo.loop(cfg)] is not None, name
        assert any(ROOT.glob(f"configs/{name}/*tiny*.yaml")), f"configs/{name}/: no tiny config"
        assert math.isfinite(algo.lr_horizon(cfg)) and algo.lr_horizon(cfg) > 0
