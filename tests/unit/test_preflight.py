"""Preflight on model directories made by plain transformers (tests/ray/families.py), not by rlpt's factory:
context from the model, every EOS id, a probe that fits, clear errors with the keys and numbers, exit 2 before
any actor starts."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlpt.config import load_config
from rlpt.models import decode_completion, load_tokenizer
from rlpt.preflight import (PreflightError, causal_lm_names, context_length, engine_architectures, inspect_model,
                            probe_ids, run_shape)
from rlpt.prepare import inspect_run
from tests.ray.families import Cell, build_model_dir

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def char64(tmp_path_factory):
    """The user's model from the issue: a 2-layer Llama with a character-level WordLevel tokenizer, 64 positions."""
    d = tmp_path_factory.mktemp("char64")
    return build_model_dir(Cell("llama", "char", "plain", positions=64), d / "model", d / "work")


@pytest.fixture(scope="module")
def qwen_chat(tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen")
    return build_model_dir(Cell("qwen2.5", "byte-bpe", "chatml"), d / "model", d / "work")


def data_file(tmp_path, n=12, long=False):
    rows = [{"prompt": ("9+" * 40 if long else "") + f"{i}+1=", "answer": str(i + 1)} for i in range(n)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "d.jsonl"


def test_the_context_comes_from_the_model_with_default_data_settings(char64, tmp_path):
    cfg = load_config(None, [f"model.path={char64}", "data.task=null", f"data.path={data_file(tmp_path)}",
                             "rollout.max_new_tokens=3"])
    prep = inspect_run(cfg)
    # 64 positions: prompt budget 64 - 3, engine max_model_len within the context (vLLM's crash #1 of the issue)
    assert prep.facts.context_len == 64 and prep.shape.prompt_budget == 61 and prep.shape.max_model_len <= 64
    # the probe fits and uses only tokens the tokenizer has (crash #2: 17 mostly-<unk> tokens past the context)
    unk = prep.tokenizer.unk_token_id
    assert 2 <= len(prep.shape.probe_ids) <= 64 and unk not in prep.shape.probe_ids
    assert prep.facts.eos_ids == (prep.tokenizer.eos_token_id,) and prep.facts.pad_is_eos


def test_a_run_that_cannot_fit_fails_in_preflight_with_exit_2_naming_the_key(char64, tmp_path):
    """`rlpt train` with data.max_prompt_tokens past the model's 64 positions: exit 2, the keys and numbers, and
    no actor started (the error comes before Ray is imported)."""
    args = [sys.executable, "-m", "rlpt.cli", "train", f"model.path={char64}", "data.task=null",
            f"data.path={data_file(tmp_path)}", "data.max_prompt_tokens=100", f"run.root={tmp_path}"]
    start = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    seconds = time.perf_counter() - start
    print(f"preflight failure after {seconds:.1f}s (including interpreter and torch/transformers imports)")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "data.max_prompt_tokens=100 + rollout.max_new_tokens=3 = 103 exceeds the model's context of 64" in res.stderr
    assert "Traceback" not in res.stderr and "actors up" not in res.stderr and "Started a local Ray" not in res.stderr
    # What keeps it fast (~0.5 s here, was 8.9 s): the length check reads the JSON files before the tokenizer is
    # loaded, and nothing on that path imports torch, transformers or the actor stack.
    probe = ("import sys; from rlpt.cli import main; rc = main(sys.argv[1:]); "
             "print('RESULT', rc, sorted(m for m in ('torch', 'transformers', 'ray', 'actors') if m in sys.modules))")
    res_m = subprocess.run([sys.executable, "-c", probe, *args[3:]], capture_output=True, text=True, timeout=120,
                           cwd=ROOT)
    assert "RESULT 2 []" in res_m.stdout, (res_m.stdout[-500:], res_m.stderr[-2000:])
    # every prompt over the budget: also a preflight error naming the key
    args2 = [*args[:-2], "data.max_prompt_tokens=8", f"data.path={data_file(tmp_path, long=True)}"]
    res2 = subprocess.run(args2, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res2.returncode == 2 and "all 12 prompts are longer than the prompt budget of 8" in res2.stderr


def test_rlpt_check_prints_what_preflight_found(qwen_chat, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"{i}+2="}], "answer": str(i + 2)} for i in range(5)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = subprocess.run([sys.executable, "-m", "rlpt.cli", "check", f"model.path={qwen_chat}", "data.task=null",
                          f"data.path={tmp_path / 'chat.jsonl'}", "data.columns.prompt=messages"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    tok = load_tokenizer(qwen_chat)
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    out = res.stdout
    assert "context      256 tokens (max_position_embeddings=256)" in out and f"EOS ids      {eos}" in out
    assert "the tokenizer's chat template" in out and "prompts      5:" in out and "0 over the budget" in out


def test_every_declared_eos_is_cut_from_the_completion(qwen_chat):
    tok = load_tokenizer(qwen_chat)
    facts = inspect_model(qwen_chat, tok)
    assert len(facts.eos_ids) == 2  # generation_config.json declares <|im_end|> and <|endoftext|>
    body = tok("größe 東京 🚀", add_special_tokens=False)["input_ids"]
    for eos in facts.eos_ids:
        assert decode_completion(tok, [*body, eos], facts.eos_ids) == "größe 東京 🚀"
    assert decode_completion(tok, body, facts.eos_ids) == "größe 東京 🚀"  # ended by length: nothing cut


def test_context_rules_and_errors(char64):
    assert context_length({"n_positions": 128, "max_position_embeddings": 512}, {}) == (128, "n_positions=128")
    assert context_length({"max_position_embeddings": 100, "rope_scaling": {"type": "dynamic", "factor": 2}}, {})[0] == 200
    with pytest.raises(PreflightError, match="context length is unknown"):
        context_length({"hidden_size": 8}, {})
    tok = load_tokenizer(char64)
    facts = inspect_model(char64, tok)
    cfg = load_config(None, ["rollout.max_new_tokens=64"])
    with pytest.raises(PreflightError, match="rollout.max_new_tokens=64 leaves no room"):
        run_shape(cfg, facts, tok)
    small = type(facts)(**{**facts.__dict__, "vocab_size": 10})
    assert small.vocab_size == 10
    ids = probe_ids(tok, list(range(2, 60)), limit=16)
    assert len(ids) == 16 and tok.unk_token_id not in ids


def test_a_tokenizer_bigger_than_the_embedding_is_an_error(char64, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(char64, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 20
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PreflightError, match=r"the tokenizer has \d+ tokens but the model's embedding has vocab_size=20"):
        inspect_model(d, load_tokenizer(d))
    cfg.update(vocab_size=64, model_type="bert", architectures=["BertModel"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PreflightError, match="architecture BertModel .* is not a causal language model"):
        inspect_model(d, load_tokenizer(d))


def test_a_tokenizer_that_does_not_give_text_back_is_reported(char64, tmp_path):
    from tokenizers import decoders

    from rlpt.preflight import round_trip

    tok = load_tokenizer(char64)
    assert round_trip(tok, "größe 3+4=7") is None
    tok.backend_tokenizer.decoder = decoders.WordPiece()  # joins tokens with spaces, like a bare WordLevel
    assert round_trip(tok, "3+4=7") == "3 + 4 = 7"


def test_the_preflight_of_a_tokenizer_json_model_imports_neither_torch_nor_the_model_registry(qwen_chat, tmp_path):
    """What makes a run's preflight ~1 s instead of ~3 s: the tokenizer.json path loads PreTrainedTokenizerFast
    alone, and the causal-LM check reads transformers' mapping as a literal (both used to import torch and the
    model registry)."""
    rows = [{"prompt": f"{i}+2=", "answer": str(i + 2)} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    probe = ("import sys; from rlpt.config import load_config; from rlpt.prepare import inspect_run; "
             f"p = inspect_run(load_config(None, ['model.path={qwen_chat}', 'data.task=null', "
             f"'data.path={tmp_path / 'd.jsonl'}'])); "
             "print('RESULT', len(p.prompts), sorted(m for m in ('torch', 'transformers.models.auto.modeling_auto', "
             "'ray', 'actors') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "RESULT 5 []" in res.stdout, (res.stdout[-500:], res.stderr[-2000:])


def test_causal_lm_names_read_from_source_equal_transformers_mapping():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = causal_lm_names()
    assert names == dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) and names["llama"] == "LlamaForCausalLM"


def test_an_architecture_the_vllm_engine_lacks_fails_in_preflight_and_the_hf_engine_takes_it(char64, tmp_path):
    """Arcee is a causal LM transformers knows and this vLLM build does not serve (both asserted, so a pin that
    changes either fails here instead of passing vacuously)."""
    assert causal_lm_names()["arcee"] == "ArceeForCausalLM"
    archs = engine_architectures()
    assert archs is not None and "LlamaForCausalLM" in archs and "ArceeForCausalLM" not in archs
    model = tmp_path / "arcee"
    shutil.copytree(char64, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["ArceeForCausalLM"],
                                                   "model_type": "arcee"}))
    args = [f"model.path={model}", "data.task=null", f"data.path={data_file(tmp_path)}", "rollout.max_new_tokens=3"]
    with pytest.raises(PreflightError, match=r"the rollout engine \(vLLM\) has no implementation of ArceeForCausalLM"):
        inspect_run(load_config(None, args))
    assert inspect_run(load_config(None, [*args, "rollout.engine=hf"])).facts.architecture == "ArceeForCausalLM"
