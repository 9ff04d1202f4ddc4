"""The learner's per-bucket sync source (actors/learner_weights.py) gives exactly what the whole-state path gives
(state_dict -> LoRA merge -> HF names -> tied lm_head dropped): same names, same order, same bits, bucket by
bucket. The ZeRO-3 side (per-bucket GatheredParameters) runs in tests/ray/test_sync.py."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from actors.learner_weights import LearnerWeights
from rlpt.models.lora import merged_state_dict
from rlpt.models.tiny import build_model
from rlpt.weights import hf_param_name, plan_buckets, sync_sources

pytestmark = pytest.mark.unit


def whole_state(module: torch.nn.Module, scaling: float | None, tied: bool) -> dict[str, torch.Tensor]:
    """The learner's whole-state path (LearnerRank._gathered_state), verbatim."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if scaling is not None:
        state = merged_state_dict(state, scaling)
    state = {hf_param_name(k): v for k, v in state.items()}
    if tied:
        state.pop("lm_head.weight", None)
    return state


def lora_model() -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_model("llama", "tiny", vocab_size=50, eos_id=0, seed=0),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # lora_B starts at zero: make the merge matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return model


def tied_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))


@pytest.mark.parametrize(("make", "scaling", "tied"), [
    (lambda: build_model("llama", "tiny", vocab_size=50, eos_id=0, seed=0), None, False),
    (lora_model, 2.0, False),
    (tied_model, None, True),
])
def test_bucket_by_bucket_equals_the_whole_state(make, scaling, tied):
    module = make()
    want = whole_state(module, scaling, tied)
    weights = LearnerWeights(module, zero3=False, lora_scaling=scaling, tied=tied)
    assert [(n, s, d) for n, s, d in weights.specs()] == [(k, tuple(v.shape), v.dtype) for k, v in want.items()]
    plan = plan_buckets(weights.specs(), bucket_bytes=4096)
    assert len(plan.buckets) > 3
    got: dict[str, torch.Tensor] = {}
    for bucket in plan.buckets:
        parts = list(weights.parts(bucket, gather_bytes=1024))
        assert len(parts) == 1  # no ZeRO-3: one part per bucket, nothing gathered
        got.update({s.name: parts[0][s.name].clone() for s in bucket.slots})
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert ("lm_head.weight" in got) is not tied and weights.max_gathered_bytes == 0  # no ZeRO-3: nothing gathered


def test_sync_sources_names_lora_pieces_and_rejects_orphans_and_clashes():
    names = list(lora_model().state_dict())
    src = sync_sources(names, tied_embeddings=False)
    q = src["model.layers.0.self_attn.q_proj.weight"]
    assert [n.split(".")[-2] for n in q] == ["base_layer", "default", "default"] and len(q) == 3
    assert len(src["model.layers.0.mlp.up_proj.weight"]) == 1
    with pytest.raises(ValueError, match="without a base weight"):
        sync_sources(["base_model.model.x.lora_A.default.weight"], False)
    with pytest.raises(ValueError, match="both sync as 'x.weight'"):
        sync_sources(["x.weight", "module.x.weight"], False)


def test_zero3_gathers_a_bucket_in_runs_of_at_most_gather_bytes():
    module = build_model("llama", "tiny", vocab_size=50, eos_id=0, seed=0)
    weights = LearnerWeights(module, zero3=True, lora_scaling=None, tied=False)
    plan = plan_buckets(weights.specs(), bucket_bytes=40_000)
    for bucket in plan.buckets:
        groups = weights.groups(bucket, 20_000)
        assert [s for g in groups for s in g] == list(bucket.slots)  # every slot once, in order
        assert all(sum(s.numel for s in g) * 4 <= 20_000 or len(g) == 1 for g in groups)
    assert max(len(weights.groups(b, 20_000)) for b in plan.buckets) >= 2
