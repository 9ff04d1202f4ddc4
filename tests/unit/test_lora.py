import copy

import pytest
import torch

from rlpt.models.lora import merged_state_dict
from rlpt.models.tiny import build_model

pytestmark = pytest.mark.unit


def test_merged_state_matches_peft_merge_and_unload():
    from peft import LoraConfig, get_peft_model

    base = build_model("llama", "tiny", vocab_size=50, eos_id=0, seed=0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # lora_B starts at zero; make the adapter non-trivial
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours = merged_state_dict(model.state_dict(), scaling=8 / 4)
    theirs = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(ours) == set(theirs)
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ours[q], before["base_model.model." + q.replace("q_proj.", "q_proj.base_layer.")])
    for k, v in model.state_dict().items():  # the training copy is untouched
        assert torch.equal(v, before[k])


def test_incomplete_pair_is_an_error():
    with pytest.raises(ValueError, match="has only lora_A"):
        merged_state_dict({"base_model.model.x.base_layer.weight": torch.zeros(2, 2),
                           "base_model.model.x.lora_A.default.weight": torch.zeros(1, 2)}, 1.0)
