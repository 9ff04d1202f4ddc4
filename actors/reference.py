"""Reference model actor: a frozen policy copy giving per-token logprobs. Created only when the loss needs it
(GRPO with beta > 0, DPO). For DPO with `reference: previous` it is also a member of the weight-sync group and
takes the new policy at each round boundary through the same bucketed broadcast as the rollout engines."""

from __future__ import annotations

import torch

from rlpt.algorithms.common import token_logprobs


class ReferenceActor:
    def __init__(self, model_path: str, dtype: str, temperature: float, micro: int, log_dir: str | None = None
                 ) -> None:
        from transformers import AutoModelForCausalLM

        from actors.logs import redirect_output
        from actors.startup import no_gc_while_starting

        redirect_output(log_dir, "reference")
        with no_gc_while_starting():
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        self.model.requires_grad_(False)
        self.temperature, self.micro = temperature, micro

    @torch.no_grad()
    def logprobs(self, input_ids_B_T: torch.Tensor, attention_mask_B_T: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, input_ids_B_T.shape[0], self.micro):
            ids, attn = input_ids_B_T[i:i + self.micro], attention_mask_B_T[i:i + self.micro]
            out.append(token_logprobs(self.model(input_ids=ids, attention_mask=attn).logits / self.temperature, ids))
        return torch.cat(out)

    # ---------------------------------------------------------------------------- weight-sync membership
    def ping(self) -> str:
        return "reference"

    def threads(self) -> int:
        return torch.get_num_threads()

    def join_sync(self, spec, rank_base: int) -> list[int]:
        from actors.weight_sync import WeightGroup

        self._group = WeightGroup(spec, rank_base)
        return [rank_base]

    @torch.no_grad()
    def receive_weights(self, plan, version: int) -> float:
        import time

        from actors.weight_sync import receive_into

        start = time.perf_counter()
        params = dict(self.model.named_parameters())

        def load(items) -> None:
            for name, t in items:
                params[name].copy_(t)

        receive_into(self._group, plan, version, load)
        return time.perf_counter() - start

    @torch.no_grad()
    def probe(self, ids: list[int]) -> list[float]:
        t = torch.tensor([list(ids)])
        return token_logprobs(self.model(input_ids=t).logits, t)[0, 1:].tolist()
