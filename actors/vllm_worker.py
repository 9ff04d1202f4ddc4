"""vLLM worker extension (`worker_extension_cls`): lets each vLLM worker join the weight-sync group and reload
weights in place from it. It uses only vLLM's public worker API (`reload_weights`), so vLLM upgrades touch
this file and actors/rollout.py only. With tensor parallelism every TP worker is a group member and loads the
full tensors; vLLM's loader keeps its own shard.
"""

from __future__ import annotations

import logging

from actors.weight_sync import GroupSpec, receive_into, rejoin
from rlpt.weights import SyncPlan


# vLLM's `reload_weights` logs on every reload, i.e. on every rlpt sync: an INFO line with its time, and a WARNING
# "RotaryEmbedding: Failed to load weights" (a rotary embedding's cos/sin cache is computed, never in a checkpoint:
# vLLM counts it as loadable and finds nothing). Thousands of identical lines per run, one of them a false alarm,
# would bury the log's real warnings; the reload's time is `timing/sync`.
PER_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.inplace",
                      "vllm.model_executor.model_loader.reload.layerwise")


class PerReloadNoise(logging.Filter):
    """Drops the two records above; any other record of those loggers (another layer that failed to load) passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Reloading and processing weights took %.2f seconds":
            return False
        return not (record.msg == "%s: Failed to load weights" and str(record.args[0]).endswith("RotaryEmbedding"))


def quiet_reloads() -> None:
    for name in PER_RELOAD_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, PerReloadNoise) for f in log.filters):
            log.addFilter(PerReloadNoise())


class RlptWorkerExtension:
    """Mixed into vLLM's Worker class by vLLM itself; `self` is the worker."""

    def rlpt_join_sync(self, spec: GroupSpec, rank_base: int) -> int:
        quiet_reloads()  # here: this runs in every TP worker process
        rank = rank_base + int(getattr(self, "rank", 0))
        old, self._rlpt_group = getattr(self, "_rlpt_group", None), None
        self._rlpt_group = rejoin(old, spec, rank)  # our own attribute on the worker
        return rank

    def rlpt_receive(self, plan: SyncPlan, version: int) -> int:
        group = getattr(self, "_rlpt_group", None)
        if group is None:
            raise RuntimeError("rlpt_receive called before rlpt_join_sync")
        return receive_into(group, plan, version, lambda it: self.reload_weights(weights_iterator=it))
