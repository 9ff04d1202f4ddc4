"""vLLM worker extension (`worker_extension_cls`): lets each vLLM worker join the weight-sync group and reload
weights in place from it. It uses only vLLM's public worker API (`reload_weights`), so vLLM upgrades touch
this file and actors/rollout.py only. With tensor parallelism every TP worker is a group member and loads the
full tensors; vLLM's loader keeps its own shard.
"""

from __future__ import annotations

from actors.weight_sync import GroupSpec, receive_into, rejoin
from rlpt.weights import SyncPlan


class RlptWorkerExtension:
    """Mixed into vLLM's Worker class by vLLM itself; `self` is the worker."""

    def rlpt_join_sync(self, spec: GroupSpec, rank_base: int) -> int:
        rank = rank_base + int(getattr(self, "rank", 0))
        old, self._rlpt_group = getattr(self, "_rlpt_group", None), None
        self._rlpt_group = rejoin(old, spec, rank)  # our own attribute on the worker
        return rank

    def rlpt_receive(self, plan: SyncPlan, version: int) -> int:
        group = getattr(self, "_rlpt_group", None)
        if group is None:
            raise RuntimeError("rlpt_receive called before rlpt_join_sync")
        return receive_into(group, plan, version, lambda it: self.reload_weights(weights_iterator=it))
