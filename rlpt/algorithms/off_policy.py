"""Off-policy correction for training on samples that an older policy generated (asynchronous rollouts,
`rollout.max_staleness` >= 1): the staleness bound, decoupled PPO and the behaviour importance weights.

Papers
  - Decoupled PPO: Hilton, Cobbe, Schulman 2021, "Batch size-invariance for policy optimization", arXiv 2110.00641
    (the proximal policy of the clip is decoupled from the behaviour policy that sampled the data); used for
    asynchronous LLM RL by AReaL, Fu et al. 2025, arXiv 2505.24298 (eq. 5).
  - Truncated importance sampling of the engine/learner mismatch: Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL training" (token-level cap C); masked (rejection) variants at token and
    sequence level with the geometric mean of the ratios: Liu et al. 2025, "When speed kills stability:
    demystifying RL collapse from the training-inference mismatch".

Notation (one response token t of row i; logprobs of the sampled token)
  b_t     behaviour: the engine's logprob, from the policy version that sampled the token (v_t)
  p_t     proximal: the learner's logprob at the start of the step (no gradient; a forward before any update, or
          the first mini-batch's own training forward: rlpt.training.recompute_old_logprobs)
  l_t     current: the learner's logprob under the weights being optimised (gradient)
  staleness     s_t = u - v_t, u the learner's version; a sample is trained on only if max_t s_t <= K (strict)
  IS weight     w_t = exp(p_t - b_t) = pi_prox / pi_behaviour
  corrections (cap C > 1; each gives a per-token weight c_t, no gradient):
    tis         c_t = min(w_t, C)                                             token-level truncation
    token_mask  c_t = w_t * 1[|log w_t| <= log C]                             token-level rejection
    seq_mask    c_t = w_t * 1[|1/|o_i| sum_t log w_t| <= log C]                sequence-level rejection on the
                                                                              geometric mean of the row's w_t
  surrogate     rho_t = exp(l_t - p_t)
                loss_t = -c_t * min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)     (AReaL eq. 5)
  drift         KL(pi_behaviour || pi_prox) per token, k3 estimator: w_t - 1 - log w_t >= 0
With the sampling policy equal to the learner's (K = 0, no engine drift) w_t = 1, c_t = 1 and the loss is GRPO's
clipped surrogate exactly.

  trust region  keep_t = not (A > 0 and w_t > 1 + eps_high or A < 0 and w_t < 1 - eps_low);  c_t <- c_t * keep_t
                PPO's clip against the behaviour policy, applied to the correction weight: a token the learner
                has already moved past the clip range since it was sampled, in its advantage's direction, gets no
                gradient. Decoupled PPO's own clip is against the proximal policy, which is the current one on the
                first pass: with one optimizer step per training step it never acts, and on the default task
                (lr 2e-3) K = 2 then took 2x the synchronous run's steps (seed 0) or never reached its reward
                (seed 1); with the trust region K = 2 learns like the synchronous run (README, Asynchronous training).

Our choices: log-ratios are clamped to +-LOG_RATIO_CLAMP before exp, as in grpo.py; masked positions (prompt,
padding) are zeroed before any arithmetic and never counted as corrected; rejection bounds are symmetric in log
space (a ratio of C and of 1/C are equally far off-policy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor

from rlpt.algorithms.grpo import LOG_RATIO_CLAMP, clipped_surrogate


@dataclass(frozen=True)
class Corrected:
    """The per-token weight of a correction (masked positions 0) and the tokens it changed: truncated tokens for
    `tis`, rejected tokens for the masked variants."""

    weight_B_T: Tensor
    changed_B_T: Tensor


def log_is_weights(prox_logp_B_T: Tensor, behav_logp_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """log w_t = p_t - b_t on response tokens, clamped; 0 (w = 1) elsewhere."""
    mask = mask_B_T.bool()
    d = (prox_logp_B_T - behav_logp_B_T).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.where(mask, d, torch.zeros((), dtype=d.dtype, device=d.device))


def _check_cap(cap: float) -> None:
    if not cap > 1.0:
        raise ValueError(f"off-policy correction: the cap C must be > 1 (a weight of 1 is on-policy); got {cap}")


def truncated(log_w_B_T: Tensor, mask_B_T: Tensor, cap: float) -> Corrected:
    """Token-level truncated IS: c_t = min(w_t, C).

    >>> c = truncated(torch.tensor([[math.log(2), math.log(0.5), math.log(4)]]), torch.ones(1, 3), cap=2.0)
    >>> c.weight_B_T.tolist(), c.changed_B_T.tolist()
    ([[2.0, 0.5, 2.0]], [[False, False, True]])
    """
    _check_cap(cap)
    mask = mask_B_T.bool()
    w = torch.exp(log_w_B_T)
    changed = (w > cap) & mask
    return Corrected(torch.where(mask, w.clamp(max=cap), torch.zeros_like(w)), changed)


def token_masked(log_w_B_T: Tensor, mask_B_T: Tensor, cap: float) -> Corrected:
    """Token-level rejection: a token whose weight is outside [1/C, C] gets weight 0, the others keep w_t."""
    _check_cap(cap)
    mask = mask_B_T.bool()
    rejected = (log_w_B_T.abs() > math.log(cap)) & mask
    keep = mask & ~rejected
    return Corrected(torch.where(keep, torch.exp(log_w_B_T), torch.zeros_like(log_w_B_T)), rejected)


def sequence_masked(log_w_B_T: Tensor, mask_B_T: Tensor, cap: float) -> Corrected:
    """Sequence-level rejection on the geometric mean of a row's weights: the whole row gets weight 0 when
    exp(mean_t log w_t) is outside [1/C, C]; kept rows keep their per-token w_t. A row without response tokens is
    never rejected (it has nothing to train on)."""
    _check_cap(cap)
    mask = mask_B_T.bool()
    n_B = mask.sum(dim=1)
    mean_log_B = log_w_B_T.sum(dim=1) / n_B.clamp(min=1)
    rejected_B = (mean_log_B.abs() > math.log(cap)) & (n_B > 0)
    rejected = rejected_B[:, None] & mask
    keep = mask & ~rejected
    return Corrected(torch.where(keep, torch.exp(log_w_B_T), torch.zeros_like(log_w_B_T)), rejected)


def behaviour_trust_region(log_w_B_T: Tensor, adv_B_T: Tensor, mask_B_T: Tensor, eps_low: float, eps_high: float
                           ) -> Tensor:
    """Which response tokens stay inside PPO's clip range around the behaviour policy, in the direction of their
    advantage (module docstring: trust region); masked positions are False.

    >>> lw = torch.tensor([[math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5), 0.0]])
    >>> behaviour_trust_region(lw, torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]]), torch.ones(1, 5), 0.2, 0.28).tolist()
    [[False, True, True, False, True]]
    """
    w = torch.exp(log_w_B_T)
    moved = ((adv_B_T > 0) & (w > 1.0 + eps_high)) | ((adv_B_T < 0) & (w < 1.0 - eps_low))
    return mask_B_T.bool() & ~moved


def within_trust_region(c: Corrected, keep_B_T: Tensor) -> Corrected:
    """The correction with the tokens outside the trust region zeroed and counted as changed."""
    return Corrected(torch.where(keep_B_T, c.weight_B_T, torch.zeros_like(c.weight_B_T)),
                     c.changed_B_T | (~keep_B_T & (c.weight_B_T != 0)))


# The corrections by name, for the config to select (an explicit dict).
CORRECTIONS: dict[str, Callable[[Tensor, Tensor, float], Corrected]] = {
    "tis": truncated, "token_mask": token_masked, "seq_mask": sequence_masked}


def decoupled_surrogate(logp_B_T: Tensor, prox_logp_B_T: Tensor, adv_B_T: Tensor, weight_B_T: Tensor,
                        eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """Decoupled PPO per token: -c_t * min(rho A, clip(rho) A), rho = exp(l - p). The clip is against the proximal
    policy (the learner at the start of the step), the weight c_t corrects for the behaviour policy; it carries no
    gradient. Returns (loss_B_T, clipped_B_T) like `clipped_surrogate`."""
    loss, clipped = clipped_surrogate(logp_B_T, prox_logp_B_T.detach(), adv_B_T, eps_low, eps_high)
    return weight_B_T.detach() * loss, clipped


def behaviour_kl(log_w_B_T: Tensor) -> Tensor:
    """k3 estimate of KL(pi_behaviour || pi_prox) per token from samples of the behaviour policy: w - 1 - log w
    (>= 0, 0 where w = 1, so masked positions, whose log w is 0, add nothing)."""
    return torch.exp(log_w_B_T) - 1.0 - log_w_B_T


def staleness_B(learner_version: int, oldest_version_B: Tensor) -> Tensor:
    """u - v per row, v the oldest policy version that sampled any of the row's tokens."""
    return learner_version - oldest_version_B


def within_bound(learner_version: int, oldest_version_B: Tensor, max_staleness: int) -> Tensor:
    """Which rows may be trained on at learner version u: u - v <= K, strictly (the bound counts the oldest
    token). A row from a version newer than the learner's is a bug upstream, not a fresh sample: it raises."""
    s = staleness_B(learner_version, oldest_version_B)
    if bool((s < 0).any()):
        raise ValueError(f"a sample's policy version {int(oldest_version_B.max())} is newer than the learner's "
                         f"({learner_version})")
    return s <= max_staleness


@dataclass(frozen=True)
class OffPolicyStats:
    """Metrics of one batch (response tokens only): how stale, how far the behaviour policy drifted from the
    learner, and how much the correction changed. Logged as `off_policy/*` every step."""

    staleness_mean: float
    staleness_max: float
    is_weight_mean: float
    is_weight_max: float
    corrected_frac: float
    behaviour_kl: float

    def as_metrics(self, prefix: str = "off_policy/") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


@torch.no_grad()
def off_policy_stats(learner_version: int, oldest_version_B: Tensor, log_w_B_T: Tensor, corrected: Corrected,
                     mask_B_T: Tensor) -> OffPolicyStats:
    """Staleness per row; the weight and the drift per response token. An empty batch reads as on-policy."""
    mask = mask_B_T.bool()
    n = int(mask.sum())
    s = staleness_B(learner_version, oldest_version_B).float()
    w = torch.exp(log_w_B_T)[mask]
    return OffPolicyStats(
        staleness_mean=float(s.mean()) if s.numel() else 0.0,
        staleness_max=float(s.max()) if s.numel() else 0.0,
        is_weight_mean=float(w.mean()) if n else 1.0,
        is_weight_max=float(w.max()) if n else 1.0,
        corrected_frac=float(corrected.changed_B_T[mask].float().mean()) if n else 0.0,
        behaviour_kl=float(behaviour_kl(log_w_B_T)[mask].mean()) if n else 0.0,
    )
