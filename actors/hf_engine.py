"""The `hf` rollout engine (`rollout.engine: hf`): the model as transformers loads it, decoded by rlpt's own loop
(rlpt.generation), behind the same adapter surface as `VllmEngine` (actors/rollout.py).

It has no fixed cost per call to speak of and starts in about a second, where vLLM pays tens of milliseconds per
`generate` and ~10 s to start: the right engine for small models and short completions, where those costs are most
of a step. It has no paged KV cache, no continuous batching and no tensor parallelism, so vLLM stays the default
and the engine for real models. A weight sync copies each received tensor straight out of the transport (the shm slot:
no private copy of the bucket first) into the parameter of that name, with no repacking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from actors.weight_sync import GroupSpec, WeightGroup, receive_into, rejoin
from rlpt.algorithms.common import token_logprobs
from rlpt.generation import generate
from rlpt.types import SamplingSpec
from rlpt.weights import SyncPlan

if TYPE_CHECKING:
    from actors.rollout import EngineOptions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HfEngine:
    """Generate with sampled-token logprobs, probe logprobs, weight-sync hooks: a transformers causal LM."""

    def __init__(self, opts: "EngineOptions") -> None:
        from transformers import AutoModelForCausalLM

        from rlpt.models import load_tokenizer

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(opts.model_path, dtype=DTYPES[opts.dtype]).to(self.device)
        self.model.eval()
        self.model.requires_grad_(False)
        self.tokenizer = load_tokenizer(opts.model_path)
        self.eos_ids = frozenset(opts.eos_ids)
        pad, rows = self.tokenizer.pad_token_id, self.model.get_input_embeddings().num_embeddings
        # padding is masked out, but its id must still index the embedding
        self.pad_id = int(pad if pad is not None and 0 <= pad < rows else min(self.eos_ids, default=0))
        self.params = {**dict(self.model.named_buffers()), **dict(self.model.named_parameters(remove_duplicate=False))}
        self.group: WeightGroup | None = None

    def generate(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], spec: SamplingSpec
                 ) -> list[list[tuple[list[int], list[float], str]]]:
        stopped = None
        if spec.stop:
            # Checked after every token, so a new match ends in the newest token: decode only a tail long enough
            # for the longest stop string even at 4 tokens per character (byte-level pieces of one character).
            window = 4 * max(len(x) for x in spec.stop) + 4

            def stopped(ids: list[int]) -> bool:
                text = self.tokenizer.decode(ids[-window:], skip_special_tokens=True)
                return any(x in text for x in spec.stop)
        outs = generate(self.model, prompt_ids, seeds, spec, self.eos_ids, self.pad_id, stopped, self.device)
        return [[(s.ids, s.logprobs, s.finish_reason) for s in samples] for samples in outs]

    @torch.no_grad()
    def prompt_logprobs(self, ids: Sequence[int]) -> list[float]:
        """log p(ids[t] | ids[<t]) for t >= 1 (the sync probe)."""
        t = torch.tensor([list(ids)], device=self.device)
        return token_logprobs(self.model(input_ids=t).logits, t)[0, 1:].tolist()

    def join_sync(self, spec: GroupSpec, rank_base: int) -> list[int]:
        old, self.group = self.group, None
        self.group = rejoin(old, spec, rank_base)
        return [rank_base]

    def receive_weights(self, plan: SyncPlan, version: int) -> None:
        if self.group is None:
            raise RuntimeError("receive_weights called before join_sync")
        receive_into(self.group, plan, version, self._load, borrow=True)  # _load copies each tensor out at once

    @torch.no_grad()
    def _load(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy each received tensor into the parameter (or persistent buffer) of that name (tied weights share
        storage: the embedding's copy is the head's)."""
        for name, tensor in weights:
            target = self.params.get(name)
            if target is None:
                raise KeyError(f"hf engine: the model has no parameter {name!r} (the learner synced it; "
                               f"e.g. {next(iter(self.params), '?')!r} exists)")
            if target.shape != tensor.shape:
                raise ValueError(f"hf engine: {name} is {tuple(target.shape)} here, {tuple(tensor.shape)} sent")
            target.copy_(tensor)
