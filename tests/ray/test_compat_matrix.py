"""The compatibility matrix: model directories written by transformers configs of real families, with real
tokenizers and chat templates (tests/ray/families.py), each through the whole path on real components:
preflight, 3 GRPO steps on the actor graph (vLLM engine, DeepSpeed rank, verifier, weight sync), the sync probe
within tolerance every step, the final checkpoint reloaded by transformers and by vLLM (same logprobs), and a
unicode completion decoded exactly as the verifier sees it.

`make test` runs the FAST cells; `make test-compat` (RLPT_COMPAT=full) runs every cell of FULL. The README lists
the matrix and its outcomes.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from actors.launch import train
from rlpt.config import load_config
from rlpt.metrics import read_metrics
from rlpt.models import decode_completion
from rlpt.prepare import inspect_run
from tests.ray.families import TEMPLATE_TOKENS, Cell, build_model_dir

pytestmark = pytest.mark.ray

FAST = [
    Cell("llama3", "tekken131k", "llama3"),  # GQA, llama3 RoPE scaling, untied, 131k vocab, two EOS ids
    Cell("qwen2.5", "byte-bpe", "chatml"),  # qkv bias, tied embeddings, two EOS ids
    Cell("qwen3", "byte-bpe", "chatml"),  # q/k norm
    Cell("mistral", "spm32k-inst", "inst"),  # SentencePiece with byte fallback and control tokens
    Cell("llama", "char", "plain", positions=64),  # the user: 64 positions, char vocab, a float plug-in
    Cell("phi3", "spm32k", "plain"),  # fused qkv / gate_up
]
FULL = FAST + [
    Cell("gemma", "spm32k", "inst"),
    Cell("mistral", "tekken131k", "inst"),
    Cell("llama3", "byte-bpe", "llama3"),
    Cell("qwen2.5", "spm32k", "chatml"),
    Cell("qwen3", "tekken131k", "chatml"),
    Cell("llama", "char", "chatml", positions=64),
]
CELLS = FULL if os.environ.get("RLPT_COMPAT") == "full" else FAST
UNICODE = "größe 東京 🚀 3+4=7"


def write_data(path: Path, chat: bool) -> None:
    rows = []
    for a in range(1, 9):
        for b in range(1, 5):
            q = f"{a}+{b}="
            rows.append({"messages": [{"role": "user", "content": q}]} if chat else {"prompt": q})
            rows[-1]["answer"] = str(a + b)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.name)
def test_cell(ray_cluster, tmp_path, cell):
    from transformers import AutoModelForCausalLM

    from actors.rollout import RolloutWorker, engine_options
    from rlpt.algorithms.common import token_logprobs

    model_dir = build_model_dir(cell, tmp_path / "model", tmp_path / "work")
    chat = cell.template != "plain"
    write_data(tmp_path / "data.jsonl", chat)
    cfg = load_config(None, [
        f"model.path={model_dir}", "data.task=null", f"data.path={tmp_path / 'data.jsonl'}",
        *(["data.columns.prompt=messages"] if chat else []), f"run.root={tmp_path}", f"run.name={cell.name}",
        "run.steps=3", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8",
        "algorithm.grpo.beta=0", "learner.micro_batch_size=8", "run.tensorboard=false", "sync.probe_every=1",
        # the user brought a plug-in verifier that returns a float (no correctness)
        *(["verifier.name=tests.unit.plugins_fixture:float_reward"] if cell.tokenizer == "char" else [])])
    # preflight: context from the model, every declared EOS id, the chat template used; default data settings
    prep = inspect_run(cfg)
    declared = TEMPLATE_TOKENS[cell.template][1]
    want_eos = [prep.tokenizer.convert_tokens_to_ids(t) for t in declared] or [prep.tokenizer.eos_token_id]
    assert list(prep.facts.eos_ids) == want_eos and prep.facts.context_len == cell.positions
    assert prep.shape.prompt_budget == cell.positions - 8 and len(prep.shape.probe_ids) <= cell.positions
    assert prep.template.startswith("the tokenizer's chat template") == chat and len(prep.prompts) == 32
    # 3 GRPO steps on the real graph, the probe within tolerance after every sync
    train(cfg, tmp_path / cell.name)
    rows = read_metrics(tmp_path / cell.name / "metrics.jsonl")
    assert len(rows) == 3 and all(r["sync/probe_max_abs_diff"] < cfg.sync.probe_tolerance for r in rows), rows
    if cell.tokenizer == "char":  # unknown correctness is absent, not 0.0
        assert all("reward/correct_frac" not in r and r["reward/mean"] >= 0.25 for r in rows)
    # the checkpoint reloads in transformers and in vLLM, with the same logprobs
    ckpt = tmp_path / cell.name / "checkpoints" / "step_000003"
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    ids = list(prep.shape.probe_ids)
    with torch.no_grad():
        want = token_logprobs(model(torch.tensor([ids])).logits, torch.tensor([ids]))[0, 1:]
    opts = engine_options(cfg, str(ckpt), prep.shape.max_model_len, prep.facts.eos_ids)
    engine = ray_cluster.remote(RolloutWorker).options(num_cpus=1).remote("ckpt", opts, str(ckpt),
                                                                         str(tmp_path / "logs"))
    try:
        got = torch.tensor(ray_cluster.get(engine.probe.remote(ids), timeout=300))
    finally:
        ray_cluster.kill(engine)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # a unicode completion, ended by each EOS the model declares, is exactly the text the verifier sees
    tok = prep.tokenizer
    body = tok(UNICODE, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id is None or tok.unk_token_id not in body
    for eos in prep.facts.eos_ids:
        assert decode_completion(tok, [*body, eos], prep.facts.eos_ids).strip() == UNICODE
