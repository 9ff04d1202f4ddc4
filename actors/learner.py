"""Learner: K DeepSpeed ranks (ZeRO 0-3; gloo on CPU, NCCL on GPU) as Ray actors, and the LearnerGroup that drives
them with explicit methods (plan the step, call every rank, gather, reduce). Nothing here knows the algorithm: the
plan, the micro-batch loop and the loss are rlpt's (rlpt.algorithms, rlpt.training); a rank is the `Trainee`.

Loss scaling: each rank's micro-batch loss already carries its share of the mini-batch normalisation (loss
weights or the pair count, set by the algorithm's plan) and is multiplied by K here. DeepSpeed averages gradients
over the K ranks and we call backward with scale_wrt_gas=False, so the optimizer sees exactly the gradient of the
mini-batch loss.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from actors.calls import ActorCallTimeout, ActorLost, gather
from actors.learner_weights import LearnerWeights
from actors.startup import no_gc_while_starting
from actors.weight_sync import GroupSpec, WeightGroup, host_store, resolve_backend
from rlpt.algorithms import algorithm_of
from rlpt.algorithms.base import StepPlan
from rlpt.algorithms.common import token_logprobs
from rlpt.batching import LearnerLayout
from rlpt.config import RlptConfig
from rlpt.errors import RunFault
from rlpt.models.lora import merged_state_dict
from rlpt.schedule import load_process_rng, lr_multiplier, save_process_rng
from rlpt.training import RankReport, dropout_active, step_metrics, train_rank
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


class MuonAbsent:
    """Stands in for DeepSpeed's MuonWithAuxAdam: rlpt's optimizer is never one (see without_deepspeed_muon)."""


def _muon_update_absent(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("rlpt's learner replaced DeepSpeed's Muon update (its optimizer is AdamW); this call means "
                       "DeepSpeed took an AdamW model for a Muon one")


def without_deepspeed_muon() -> None:
    """DeepSpeed (0.19) imports its Muon optimizer modules on every ZeRO init and in ZeRO-1/2's gradient
    partitioning, only to check `isinstance(optimizer, MuonWithAuxAdam)`; their `@torch.compile` decorators import
    torch's inductor: ~1.3 s of every learner rank's start-up on CPU. rlpt's optimizer is torch's AdamW, so the two
    modules are replaced, before DeepSpeed is imported, by stand-ins: a class no optimizer is an instance of, and an
    update that refuses to run. A module already imported is left as it is."""
    import types

    stand_ins = {"deepspeed.runtime.zero.muon.muon_optimizer": {"MuonWithAuxAdam": MuonAbsent},
                 "deepspeed.runtime.zero.muon.original_muon": {"muon_update": _muon_update_absent}}
    for name, attrs in stand_ins.items():
        if name not in sys.modules:
            module = types.ModuleType(name, "rlpt stand-in (actors.learner.without_deepspeed_muon)")
            module.__dict__.update(attrs)
            sys.modules[name] = module


class LearnerRank:
    """Ray actor body: one DeepSpeed rank. Every public method is called on all ranks at once by LearnerGroup."""

    def __init__(self, rank: int, world: int, cfg: RlptConfig, model_path: str, log_dir: str | None = None) -> None:
        from actors.logs import redirect_output

        redirect_output(log_dir, f"learner-rank-{rank}")
        self.cfg, self.rank, self.world, self.model_path = cfg, rank, world, model_path
        self._store = None
        self.group: WeightGroup | None = None
        self.plan: SyncPlan | None = None

    def threads(self) -> int:
        return torch.get_num_threads()

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
        without_deepspeed_muon()
        with no_gc_while_starting():
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
        self.dropout = dropout_active(model)  # the Trainee protocol's: may a training forward stand for an eval one
        params = [p for p in model.parameters() if p.requires_grad]
        lc = cfg.learner
        opt = torch.optim.AdamW(params, lr=lc.lr, betas=lc.betas, weight_decay=lc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_multiplier(lc, self._total, step))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=_ds_config(cfg, self.micro, self._gas))

    # ------------------------------------------------------------------------------------------ training
    # The Trainee protocol of rlpt.training: the generic micro-batch loop drives these.
    def logprobs(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        logits = self.engine(input_ids=ids, attention_mask=attn).logits
        return token_logprobs(logits / self.cfg.rollout.temperature, ids)

    def set_train(self, train: bool) -> None:
        self.engine.train(train)

    def backward_step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.world, scale_wrt_gas=False)
        self.engine.step()  # DeepSpeed steps the optimizer (and LR) at the accumulation boundary only

    def grad_norm(self) -> float:
        return float(self.engine.get_global_grad_norm() or 0.0)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def optimizer_steps(self) -> int:
        return int(self.engine.global_steps)

    def train(self, plan: StepPlan) -> RankReport:
        """This rank's share of one training step (every optimizer step of it), whatever the algorithm."""
        start = time.perf_counter()
        report = train_rank(algorithm_of(self.cfg), self.cfg, self, plan, self.micro)
        return replace(report, seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------------------------- full weights
    def _gathered_state(self) -> dict[str, torch.Tensor] | None:
        """Full HF-named weights on rank 0 (None elsewhere). Collective under ZeRO-3: call on every rank."""
        with self._full_parameters() as module:
            state = {k: v.detach().clone() for k, v in module.state_dict().items()} if self.rank == 0 else None
        if state is None:
            return None
        if self.lora_scaling is not None:
            state = merged_state_dict(state, self.lora_scaling)
        state = {hf_param_name(k): v for k, v in state.items()}
        if self.tie_embeddings:
            state.pop("lm_head.weight", None)  # vLLM and HF re-tie it from the embeddings
        return state

    @contextmanager
    def _full_parameters(self) -> Iterator[torch.nn.Module]:
        """The module with every parameter whole (ZeRO-3 gathers them: collective, call on every rank)."""
        module = self.engine.module
        if self.cfg.learner.zero_stage != 3:
            yield module
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield module

    # ------------------------------------------------------------------------------------------ weight sync
    def _sync_weights(self) -> LearnerWeights:
        """What this rank syncs, bucket by bucket (rebuilt with the engine, e.g. after reset_to_base)."""
        weights = getattr(self, "_weights", None)
        if weights is None or weights.module is not self.engine.module:
            weights = self._weights = LearnerWeights(self.engine.module, self.cfg.learner.zero_stage == 3,
                                                     self.lora_scaling, self.tie_embeddings)
        return weights

    def _sync_plan(self) -> SyncPlan:
        if self.plan is None:
            self.plan = plan_buckets(self._sync_weights().specs(), int(self.cfg.sync.bucket_mb * 2**20))
        return self.plan

    def sync_plan(self) -> SyncPlan | None:
        """The bucket layout (rank 0; None elsewhere). No gather: under ZeRO-3 shapes come from `ds_shape`."""
        plan = self._sync_plan()
        return plan if self.rank == 0 else None

    def open_sync_group(self, host: str) -> int:
        """A fresh store for a new group generation. The old group is closed first: after a failed sync, members
        still blocked in it then fail at once (their peer is gone) instead of at the backend timeout."""
        self.leave_sync_group()
        self._store = host_store(host, self.cfg.sync.timeout_s)
        return int(self._store.port)

    def leave_sync_group(self) -> None:
        """Close this rank's end of the group and the store it hosts (after a failed sync: members blocked in
        either fail at once); its shared memory, if any, goes with it."""
        if self.group is not None:
            self.group.close()
        self.group = self._store = None

    def join_sync_group(self, spec: GroupSpec) -> str:
        """Rank 0's side of the rendezvous; it offers shared memory sized to its plan's largest bucket. Returns the
        transport the group chose."""
        self.group = WeightGroup(spec, 0, store=self._store, slot_bytes=self._sync_plan().max_bucket_bytes)
        return self.group.transport_name

    def send_weights(self, version: int, confirm: bool = True) -> None:
        """Rank 0 sends bucket by bucket; under ZeRO-3 every other rank joins each part's gather, in plan order
        (rank 0 enters them all even when the transfer fails, so no rank is left inside a gather). `confirm=False`:
        return without waiting for the members to finish loading (WeightGroup.send)."""
        plan, weights = self._sync_plan(), self._sync_weights()
        part = plan.max_bucket_bytes // 4  # ZeRO-3 gathers (actors/learner_weights.py): rank 0 stays under 2 buckets
        if self.rank != 0:
            for bucket in plan.buckets:
                for _ in weights.parts(bucket, part, keep=False):
                    pass
            return
        assert self.group is not None, "join_sync_group first"
        self.group.send(plan, version, lambda i: weights.parts(plan.buckets[i], part), confirm)

    def sync_stats(self) -> dict[str, float | str]:
        """Figures of this rank's last send: the transport and seconds per phase (rank 0), and the most parameter
        bytes one ZeRO-3 gather held (every rank)."""
        group: dict[str, float | str] = {} if self.group is None else {**self.group.times,
                                                                       "transport": self.group.transport_name}
        return {**group, "max_gathered_bytes": float(self._sync_weights().max_gathered_bytes)}

    def checksums(self) -> dict[str, str]:
        """Per-parameter checksums of the training copy, split by trainable or frozen (for tests and audits)."""
        from rlpt.weights import state_checksum

        with self._full_parameters() as module:
            params = [(n, p.detach().clone(), p.requires_grad) for n, p in module.named_parameters()]
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
        self.engine.save_checkpoint(out_dir, tag="deepspeed", save_latest=False)
        save_process_rng(Path(out_dir) / f"rng_rank{self.rank}.pt")

    def load_state(self, in_dir: str) -> None:
        path, _ = self.engine.load_checkpoint(in_dir, tag="deepspeed", load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"learner rank {self.rank}: no DeepSpeed state under {in_dir}")
        load_process_rng(Path(in_dir) / f"rng_rank{self.rank}.pt")


class LearnerTimeout(RunFault, TimeoutError):
    pass


class LearnerRankLost(RunFault):
    """A learner rank died: the run stops (its checkpoints stay valid; `rlpt train --resume` continues)."""


class LearnerGroup:
    """Driver-side handle on the K ranks. Explicit fan-out: split the batch, call every rank, gather, reduce."""

    def __init__(self, ranks: Sequence[Any], layout: LearnerLayout, cfg: RlptConfig, pad_id: int,
                 timeout_s: float) -> None:
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
        """One training step: the algorithm plans its optimizer steps, every rank trains its share, the group
        reduces the ranks' reports into metrics."""
        plan = algorithm_of(self.cfg).plan(batch, self.layout, self.cfg, self.pad_id, step)
        reports: list[RankReport] = self._all("train_step", [r.train.remote(plan.for_rank(k))
                                                             for k, r in enumerate(self.ranks)])
        return step_metrics(reports, plan)

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

    def send_refs(self, version: int, confirm: bool = True) -> list[Any]:
        """Start `send_weights` on every rank (rank 0 broadcasts; others join ZeRO-3 gathers)."""
        return [r.send_weights.remote(version, confirm) for r in self.ranks]
