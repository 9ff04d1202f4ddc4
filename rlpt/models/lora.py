"""LoRA helpers: merged HF-named weights computed from a (gathered) peft state dict, without touching the module.

peft names a wrapped linear's pieces `<path>.base_layer.weight`, `<path>.lora_A.<adapter>.weight` and
`<path>.lora_B.<adapter>.weight` under a `base_model.model.` prefix. The merged weight is
W + (B @ A) * alpha / r, which is what `merge_and_unload()` computes, but here on plain tensors: it works the same
for a ZeRO-3-gathered state and never mutates the training copy (in-place merge/unmerge is not bit-exact).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<path>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


def merged_state_dict(state: Mapping[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """HF-named full weights from a peft LoRA model's state dict (adapter 'default' or a single other one)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        m = _LORA.match(name)
        if m:
            pairs.setdefault(m["path"], {})[m["ab"]] = t
            continue
        out[name.removeprefix(_PREFIX).replace(".base_layer.", ".")] = t
    for path, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA layer {path} has only lora_{''.join(ab)}")
        key = path.removeprefix(_PREFIX) + ".weight"
        base = out[key]
        delta = (ab["B"].float() @ ab["A"].float()) * scaling
        out[key] = (base.float() + delta).to(base.dtype)
    return out

