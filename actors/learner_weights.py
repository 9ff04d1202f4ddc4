"""What a learner rank syncs, bucket by bucket: the names, shapes and (gathered) tensors of its training copy.

Under ZeRO-3 every rank holds a shard of each parameter. A bucket's tensors are gathered in parts, each one
`GatheredParameters` over just that part's parameters (a collective every rank enters for the same parts in the
same order), and each part is packed into the transfer buffer before the next is gathered. A part holds at most
`gather_bytes` (a quarter of the plan's largest bucket) unless one tensor alone is larger. Rank 0's extra memory is
then the transfer buffer (one bucket) plus what one gather needs: measured about 2.5x the part on CPU (DeepSpeed's
flat output and input copy, gloo's own flat output), so about 1.6 buckets. Whole-bucket gathers measured 2.5 buckets
with 64 MB buckets, and the whole-model gather this replaces held the whole model.
Shapes come from `ds_shape`, so planning gathers nothing.
Names, LoRA merging and tied embeddings follow `rlpt.weights.sync_sources` and `rlpt.models.lora.merged_state_dict`,
exactly as the whole-state path does (tests/unit/test_learner_weights.py holds them equal).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Iterator, Sequence

import torch

from rlpt.models.lora import merged_state_dict
from rlpt.weights import Bucket, TensorSlot, hf_param_name, sync_sources


def full_shape(t: torch.Tensor) -> tuple[int, ...]:
    """A parameter's whole shape, also when ZeRO-3 has partitioned it (its own shape is then empty)."""
    return tuple(int(d) for d in getattr(t, "ds_shape", t.shape))


class LearnerWeights:
    """The synced view of one training module (rebuild it when the module is rebuilt)."""

    def __init__(self, module: torch.nn.Module, zero3: bool, lora_scaling: float | None, tied: bool) -> None:
        self.module, self.zero3, self.lora_scaling = module, zero3, lora_scaling
        self.raw: dict[str, torch.Tensor] = dict(module.state_dict(keep_vars=True))  # the live parameters
        self.sources = sync_sources(list(self.raw), tied)
        self.max_gathered_bytes = 0  # the most parameter bytes one gather brought in (tests, benchmarks)

    def specs(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """(name, shape, dtype) of every synced tensor, in sync order (a LoRA merge keeps its base's)."""
        return [(name, full_shape(self.raw[raws[0]]), self.raw[raws[0]].dtype) for name, raws in self.sources.items()]

    def groups(self, bucket: Bucket, gather_bytes: int) -> list[tuple[TensorSlot, ...]]:
        """The bucket's slots in gather order: one group without ZeRO-3, else runs of at most `gather_bytes`."""
        if not self.zero3:
            return [bucket.slots]
        itemsize = bucket.torch_dtype.itemsize
        out: list[list[TensorSlot]] = [[]]
        used = 0
        for slot in bucket.slots:
            if out[-1] and (used + slot.numel) * itemsize > gather_bytes:
                out.append([])
                used = 0
            out[-1].append(slot)
            used += slot.numel
        return [tuple(g) for g in out]

    def _gathered(self, raws: Sequence[str]) -> ContextManager[Any]:
        """Inside it, these parameters are whole on every rank (ZeRO-3: collective, every rank calls it)."""
        if not self.zero3:
            return nullcontext()
        import deepspeed

        params = list({id(p): p for p in (self.raw[r] for r in raws) if hasattr(p, "ds_id")}.values())
        self.max_gathered_bytes = max(self.max_gathered_bytes, sum(p.ds_numel * p.element_size() for p in params))
        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def parts(self, bucket: Bucket, gather_bytes: int, keep: bool = True) -> Iterator[dict[str, torch.Tensor]]:
        """The bucket's synced tensors by name, one gather group at a time; each part is valid until the next is
        asked for (the tensors may be the training weights themselves: copy, never modify). `keep=False` (ranks
        other than 0) only takes part in the gathers."""
        for slots in self.groups(bucket, gather_bytes):
            raws = list(dict.fromkeys(raw for slot in slots for raw in self.sources[slot.name]))
            with self._gathered(raws):
                if not keep:
                    yield {}
                    continue
                state = {raw: self.raw[raw].detach() for raw in raws}
                if self.lora_scaling is not None:
                    state = merged_state_dict(state, self.lora_scaling)
                yield {hf_param_name(k): v for k, v in state.items()}
