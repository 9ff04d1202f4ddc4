"""Learner: K DeepSpeed ranks (ZeRO 0-3; gloo on CPU, NCCL on GPU) as Ray actors, and the LearnerGroup that drives
them with explicit methods (split the batch, call every rank, gather, reduce).

Loss scaling: each rank's micro-batch loss is sum(token_loss * weight) * K, where the weights (set per mini-batch
by rlpt.batching) already normalise over the whole mini-batch. DeepSpeed averages gradients over the K ranks and
we call backward with scale_wrt_gas=False, so the optimizer sees exactly the gradient of the mini-batch loss.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
from datetime import timedelta
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from actors.calls import ActorCallTimeout, ActorLost, gather
from actors.weight_sync import GroupSpec, WeightGroup, host_store, resolve_backend
from rlpt.algorithms import ALGORITHMS
from rlpt.algorithms.common import token_logprobs
from rlpt.config import RlptConfig
from rlpt.models.lora import merged_state_dict
from rlpt.batching import select_rows
from rlpt.types import TrainBatch
from rlpt.weights import SyncPlan, hf_param_name, plan_buckets


def _ds_config(cfg: RlptConfig, micro: int, gas: int) -> dict[str, Any]:
    lc = cfg.learner
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": lc.grad_clip,
        "zero_optimization": {"stage": lc.zero_stage},
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _lr_lambda(cfg: RlptConfig, total_optimizer_steps: int):
    lc = cfg.learner

    def f(step: int) -> float:
        if step < lc.warmup_steps:
            return (step + 1) / (lc.warmup_steps + 1)
        frac = (step - lc.warmup_steps) / max(1, total_optimizer_steps - lc.warmup_steps)
        if lc.lr_schedule == "linear":
            return max(0.0, 1.0 - frac)
        if lc.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
        return 1.0

    return f


@dataclass
class RankSums:
    """Per-rank sums over response tokens; the group adds them up (maxima are maxed) and divides once."""

    tokens: float = 0.0
    loss: float = 0.0
    clipped: float = 0.0
    kl: float = 0.0
    ratio: float = 0.0
    ratio_max: float = 0.0
    gap: float = 0.0
    gap_max: float = 0.0
    gap_tokens: float = 0.0
    grad_norms: list[float] = field(default_factory=list)
    lr: float = 0.0


class LearnerRank:
    """Ray actor body: one DeepSpeed rank. Every public method is called on all ranks at once by LearnerGroup."""

    def __init__(self, rank: int, world: int, cfg: RlptConfig, model_path: str) -> None:
        self.cfg, self.rank, self.world, self.model_path = cfg, rank, world, model_path
        self._store = None
        self.group: WeightGroup | None = None
        self.plan: SyncPlan | None = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port, for the torch.distributed rendezvous (asked of rank 0)."""
        import socket

        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            return ray.util.get_node_ip_address(), sock.getsockname()[1]

    def setup(self, master_addr: str, master_port: int, micro: int, gas: int, total_optimizer_steps: int) -> None:
        cfg, rank, world = self.cfg, self.rank, self.world
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK="0")
        backend = resolve_backend(cfg.learner.backend)
        if backend == "gloo":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            # DeepSpeed compiles a shared-memory op (80+ s) on every CPU init_distributed; only inference uses it.
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        import deepspeed

        self.micro, self._gas, self._total = micro, gas, total_optimizer_steps
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=cfg.run.actor_timeout_s))
        self._build_engine()

    def reset_to_base(self) -> None:
        """Start again from the base model with a fresh optimizer and schedule (RFT rounds, restart: base)."""
        self.engine = self.optimizer = self.scheduler = None
        self._build_engine()

    def _build_engine(self) -> None:
        import deepspeed
        from transformers import AutoModelForCausalLM

        cfg = self.cfg
        torch.manual_seed(cfg.run.seed)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        self.tie_embeddings = bool(getattr(model.config, "tie_word_embeddings", False))
        self.lora_scaling = None
        if cfg.model.lora.enabled:
            from peft import LoraConfig, get_peft_model

            lcfg = cfg.model.lora
            model = get_peft_model(model, LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                                                     target_modules=list(lcfg.target_modules)))
            self.lora_scaling = lcfg.alpha / lcfg.r
        params = [p for p in model.parameters() if p.requires_grad]
        lc = cfg.learner
        opt = torch.optim.AdamW(params, lr=lc.lr, betas=lc.betas, weight_decay=lc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, self._total))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=_ds_config(cfg, self.micro, self._gas))

    # ------------------------------------------------------------------------------------------ training
    def _logprobs(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        logits = self.engine(input_ids=ids, attention_mask=attn).logits
        return token_logprobs(logits / self.cfg.rollout.temperature, ids)

    @torch.no_grad()
    def old_logprobs(self, shares: Sequence[TrainBatch]) -> list[torch.Tensor]:
        self.engine.eval()
        return [torch.cat([self._logprobs(mb.input_ids_B_T[i:i + self.micro], mb.attention_mask_B_T[i:i + self.micro])
                           for i in range(0, mb.num_rows, self.micro)]) for mb in shares]

    def train_step(self, shares: Sequence[TrainBatch]) -> RankSums:
        """One training step on this rank's share of every mini-batch, ppo_epochs times. The rollout-vs-learner
        logprob gap is measured on mini-batch 0 of epoch 0: DeepSpeed steps only at the accumulation boundary, so
        every micro-batch there still sees the policy that generated the rollouts (after a sync)."""
        lc = self.cfg.learner
        token_loss = ALGORITHMS[self.cfg.algorithm.name].token_loss
        olds = self.old_logprobs(shares) if lc.old_logprobs == "recompute" else None
        sums = RankSums()
        self.engine.train()
        for epoch in range(lc.ppo_epochs):
            for m, mb in enumerate(shares):
                for i in range(0, mb.num_rows, self.micro):
                    rows = slice(i, i + self.micro)
                    mask = mb.loss_mask_B_T[rows].bool()
                    logp = self._logprobs(mb.input_ids_B_T[rows], mb.attention_mask_B_T[rows])
                    old = mb.rollout_logprobs_B_T[rows] if olds is None else olds[m][rows]
                    t = token_loss(logp, old, select_rows(mb, torch.arange(mb.num_rows)[rows]), self.cfg)
                    loss = (t.loss_B_T * mb.loss_weights_B_T[rows]).sum()
                    self.engine.backward(loss * self.world, scale_wrt_gas=False)
                    self.engine.step()
                    self._accumulate(sums, t, logp, mb.rollout_logprobs_B_T[rows], mask, float(loss),
                                     gap=epoch == 0 and m == 0)
                sums.grad_norms.append(float(self.engine.get_global_grad_norm() or 0.0))
        sums.lr = float(self.scheduler.get_last_lr()[0])
        return sums

    def train_pairs(self, shares: Sequence[TrainBatch], pairs_per_mini_batch: Sequence[int]) -> RankSums:
        """DPO step over this rank's share of each mini-batch (rows 2i chosen, 2i+1 rejected). The loss of a
        mini-batch is the mean over its real pairs; `clipped` counts pairs with margin > 0 (preference accuracy),
        `kl` sums margins, `ratio` sums the DPO loss (reduced by LearnerGroup.train_pairs)."""
        from rlpt.algorithms.dpo import dpo_loss, winner_nll

        d = self.cfg.algorithm.dpo
        sums = RankSums()
        self.engine.train()
        for m, (mb, n_pairs) in enumerate(zip(shares, pairs_per_mini_batch)):
            for i in range(0, mb.num_rows, self.micro):
                rows = slice(i, i + self.micro)
                mask = mb.loss_mask_B_T[rows].bool()
                logp = self._logprobs(mb.input_ids_B_T[rows], mb.attention_mask_B_T[rows])
                seq = torch.where(mask, logp, torch.zeros(())).sum(dim=1)
                assert mb.ref_logprobs_B_T is not None, "DPO rows need reference logprobs"
                ref = torch.where(mask, mb.ref_logprobs_B_T[rows], torch.zeros(())).sum(dim=1)
                valid = mask[0::2].any(dim=1).float()
                losses, margin = dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], d.beta, d.label_smoothing)
                if d.nll_alpha > 0:
                    losses = losses + d.nll_alpha * winner_nll(seq[0::2], mask[0::2].sum(dim=1))
                loss = (losses * valid).sum() / max(n_pairs, 1)
                self.engine.backward(loss * self.world, scale_wrt_gas=False)
                self.engine.step()
                with torch.no_grad():
                    sums.tokens += float(valid.sum())
                    sums.loss += float(loss)
                    sums.clipped += float(((margin > 0).float() * valid).sum())
                    sums.kl += float((margin * valid).sum())
                    sums.ratio += float((losses * valid).sum())
                    if m == 0:
                        d_gap = (logp.detach()[mask] - mb.rollout_logprobs_B_T[rows][mask]).abs()
                        if d_gap.numel():
                            sums.gap += float(d_gap.sum())
                            sums.gap_max = max(sums.gap_max, float(d_gap.max()))
                            sums.gap_tokens += float(d_gap.numel())
            sums.grad_norms.append(float(self.engine.get_global_grad_norm() or 0.0))
        sums.lr = float(self.scheduler.get_last_lr()[0])
        return sums

    @staticmethod
    @torch.no_grad()
    def _accumulate(s: RankSums, t: Any, logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                    loss: float, gap: bool) -> None:
        n = float(mask.sum())
        ratio = torch.exp(t.log_ratio_B_T[mask])
        s.tokens += n
        s.loss += loss
        s.clipped += float(t.clipped_B_T.sum())
        s.kl += 0.0 if t.kl_B_T is None else float(t.kl_B_T[mask].sum())
        s.ratio += float(ratio.sum())
        s.ratio_max = max(s.ratio_max, float(ratio.max()) if n else 0.0)
        if gap and n:
            d = (logp.detach()[mask] - rollout_logp[mask]).abs()
            s.gap, s.gap_max, s.gap_tokens = s.gap + float(d.sum()), max(s.gap_max, float(d.max())), s.gap_tokens + n

    # ------------------------------------------------------------------------------------- full weights
    def _gathered_state(self) -> dict[str, torch.Tensor] | None:
        """Full HF-named weights on rank 0 (None elsewhere). Collective under ZeRO-3: call on every rank."""
        module = self.engine.module
        if self.cfg.learner.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                state = {k: v.detach().clone() for k, v in module.state_dict().items()} if self.rank == 0 else None
        else:
            state = {k: v.detach() for k, v in module.state_dict().items()} if self.rank == 0 else None
        if state is None:
            return None
        if self.lora_scaling is not None:
            state = merged_state_dict(state, self.lora_scaling)
        state = {hf_param_name(k): v for k, v in state.items()}
        if self.tie_embeddings:
            state.pop("lm_head.weight", None)  # vLLM and HF re-tie it from the embeddings
        return state

    def sync_plan(self) -> SyncPlan | None:
        state = self._gathered_state()
        if state is None:
            return None
        self.plan = plan_buckets([(k, tuple(v.shape), v.dtype) for k, v in state.items()],
                                 int(self.cfg.sync.bucket_mb * 2**20))
        return self.plan

    def open_sync_group(self, host: str) -> int:
        """A fresh store for a new group generation. The old group is closed first: after a failed sync, members
        still blocked in its broadcast then fail at once (their peer is gone) instead of at the backend timeout."""
        self.group = None
        self._store = host_store(host, self.cfg.sync.timeout_s)
        return int(self._store.port)

    def leave_sync_group(self) -> None:
        """Close this rank's end of the group (after a failed sync: members blocked in it fail at once)."""
        self.group = None

    def join_sync_group(self, spec: GroupSpec) -> None:
        self.group = WeightGroup(spec, 0, store=self._store)

    def send_weights(self, version: int) -> None:
        state = self._gathered_state()
        if state is not None:
            assert self.group is not None and self.plan is not None, "join_sync_group/sync_plan first"
            self.group.send(self.plan, version, lambda i: {s.name: state[s.name] for s in self.plan.buckets[i].slots})

    def checksums(self) -> dict[str, str]:
        """Per-parameter checksums of the training copy, split by trainable or frozen (for tests and audits)."""
        from rlpt.weights import state_checksum

        module = self.engine.module
        if self.cfg.learner.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                params = [(n, p.detach().clone(), p.requires_grad) for n, p in module.named_parameters()]
        else:
            params = [(n, p.detach(), p.requires_grad) for n, p in module.named_parameters()]
        return {f"{'trainable' if g else 'frozen'}:{n}": state_checksum([(n, t)]) for n, t, g in params}

    @torch.no_grad()
    def probe(self, ids: Sequence[int]) -> list[float]:
        self.engine.eval()
        t = torch.tensor([list(ids)])
        return token_logprobs(self.engine(input_ids=t).logits, t)[0, 1:].tolist()

    def save_hf(self, out_dir: str) -> None:
        """Write an HF checkpoint (safetensors) into `out_dir`, loadable by transformers and vLLM. Collective under
        ZeRO-3. The caller makes the whole checkpoint atomic (rlpt.loops.common.save_checkpoint)."""
        state = self._gathered_state()
        if state is None:
            return
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
        src = Path(self.model_path)
        for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "chat_template.jinja"):
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)

    def save_state(self, out_dir: str) -> None:
        """Everything exact resume needs from this rank: DeepSpeed model, optimizer and LR-scheduler state
        (collective), and this process's RNG states."""
        import random

        import numpy as np

        self.engine.save_checkpoint(out_dir, tag="deepspeed", save_latest=False)
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        torch.save(rng, Path(out_dir) / f"rng_rank{self.rank}.pt")

    def load_state(self, in_dir: str) -> None:
        import random

        import numpy as np

        path, _ = self.engine.load_checkpoint(in_dir, tag="deepspeed", load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"learner rank {self.rank}: no DeepSpeed state under {in_dir}")
        rng = torch.load(Path(in_dir) / f"rng_rank{self.rank}.pt", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])


class LearnerTimeout(TimeoutError):
    pass


class LearnerRankLost(RuntimeError):
    """A learner rank died: the run stops (its checkpoints stay valid; `rlpt train --resume` continues)."""


class LearnerGroup:
    """Driver-side handle on the K ranks. Explicit fan-out: split the batch, call every rank, gather, reduce."""

    def __init__(self, ranks: Sequence[Any], layout: Any, cfg: RlptConfig, pad_id: int, timeout_s: float) -> None:
        self.ranks, self.layout, self.cfg, self.pad_id, self.timeout_s = list(ranks), layout, cfg, pad_id, timeout_s

    def _all(self, what: str, refs: list[Any]) -> list[Any]:
        """Every rank's result; a dead rank fails the call at once (its peers would sit in a collective until the
        backend's timeout), a late one after `timeout_s`, each naming the rank."""
        try:
            return gather(f"learner {what}", refs, [f"learner rank {k}" for k in range(len(refs))], self.timeout_s)
        except ActorCallTimeout as e:
            raise LearnerTimeout(str(e)) from None
        except ActorLost as e:
            raise LearnerRankLost(f"{e}: the run cannot go on without it (a learner rank holds a shard of the "
                                  f"model and optimizer)") from None

    def train_step(self, batch: TrainBatch, step: int) -> dict[str, float]:
        from rlpt.batching import plan_mini_batches

        mode, norm_len = ALGORITHMS[self.cfg.algorithm.name].aggregation(self.cfg)
        mbs = plan_mini_batches(batch, self.layout, mode, norm_len, self.pad_id, seed=self.cfg.run.seed * 100_003 + step)
        sums: list[RankSums] = self._all("train_step", [
            r.train_step.remote([mbs[m][k] for m in range(len(mbs))]) for k, r in enumerate(self.ranks)])
        tokens = sum(s.tokens for s in sums)
        gap_tokens = sum(s.gap_tokens for s in sums)
        steps = self.cfg.learner.ppo_epochs * len(mbs)
        return {
            "actor/loss": sum(s.loss for s in sums) / steps,
            "actor/clip_frac": sum(s.clipped for s in sums) / max(tokens, 1.0),
            "actor/kl": sum(s.kl for s in sums) / max(tokens, 1.0),
            "actor/ratio_mean": sum(s.ratio for s in sums) / max(tokens, 1.0),
            "actor/ratio_max": max(s.ratio_max for s in sums),
            "actor/grad_norm": sums[0].grad_norms[-1] if sums[0].grad_norms else 0.0,
            "actor/lr": sums[0].lr,
            "actor/tokens": tokens / self.cfg.learner.ppo_epochs,
            "logprob_gap/mean": sum(s.gap for s in sums) / max(gap_tokens, 1.0),
            "logprob_gap/max": max(s.gap_max for s in sums),
        }

    def train_pairs(self, batch: TrainBatch, step: int, epochs: int) -> dict[str, float]:
        """DPO: `epochs` passes over the pairs, each cut into mini-batches (one optimizer step each)."""
        from rlpt.batching import plan_pair_batches

        all_sums: list[RankSums] = []
        for epoch in range(epochs):
            shares, counts = plan_pair_batches(batch, self.layout, self.pad_id,
                                               seed=(self.cfg.run.seed * 100_003 + step) * 101 + epoch)
            sums = self._all("train_pairs", [r.train_pairs.remote([mb[k] for mb in shares], counts)
                                             for k, r in enumerate(self.ranks)])
            all_sums += sums if epoch == 0 else [replace(s, gap=0.0, gap_tokens=0.0, gap_max=0.0) for s in sums]
        pairs = max(sum(s.tokens for s in all_sums), 1.0)
        gap_tokens = sum(s.gap_tokens for s in all_sums)
        return {
            "dpo/loss": sum(s.ratio for s in all_sums) / pairs,
            "dpo/margin": sum(s.kl for s in all_sums) / pairs,
            "dpo/accuracy": sum(s.clipped for s in all_sums) / pairs,
            "actor/grad_norm": all_sums[-1].grad_norms[-1] if all_sums[-1].grad_norms else 0.0,
            "actor/lr": all_sums[-1].lr,
            "logprob_gap/mean": sum(s.gap for s in all_sums) / max(gap_tokens, 1.0),
            "logprob_gap/max": max(s.gap_max for s in all_sums),
        }

    def reset_to_base(self) -> None:
        self._all("reset_to_base", [r.reset_to_base.remote() for r in self.ranks])

    def checksums(self) -> dict[str, str]:
        """Per-parameter checksums (rank 0's view). Collective under ZeRO-3, hence called on every rank."""
        return self._all("checksums", [r.checksums.remote() for r in self.ranks])[0]

    def sync_plan(self) -> SyncPlan:
        return self._all("sync_plan", [r.sync_plan.remote() for r in self.ranks])[0]

    def probe(self, ids: Sequence[int]) -> list[float]:
        return self._all("probe", [r.probe.remote(list(ids)) for r in self.ranks])[0]

    def save_hf(self, out_dir: Path) -> None:
        self._all("save_hf", [r.save_hf.remote(str(out_dir)) for r in self.ranks])

    def save_state(self, out_dir: Path) -> None:
        self._all("save_state", [r.save_state.remote(str(out_dir)) for r in self.ranks])

    def load_state(self, in_dir: Path) -> None:
        self._all("load_state", [r.load_state.remote(str(in_dir)) for r in self.ranks])

    def send_refs(self, version: int) -> list[Any]:
        """Start `send_weights` on every rank (rank 0 broadcasts; others join ZeRO-3 gathers)."""
        return [r.send_weights.remote(version) for r in self.ranks]
