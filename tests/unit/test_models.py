import pytest
import torch

from rlpt.config import load_config
from rlpt.models import ModelPathError, load_tokenizer, resolve_model_path
from rlpt.models.tiny import EOS, init_tiny

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: init_tiny(root / arch, arch=arch, size="tiny", seed=0) for arch in ("llama", "qwen2")}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_reloads_with_transformers(tiny_dirs, arch):
    from transformers import AutoModelForCausalLM

    d = tiny_dirs[arch]
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(d)
    assert model.config.model_type == arch
    assert model.config.hidden_size // model.config.num_attention_heads in (32, 64)  # vLLM CPU attention sizes
    tok = load_tokenizer(d)
    assert tok.eos_token == EOS and tok.pad_token_id is not None
    ids = torch.tensor([tok("12+34=")["input_ids"]])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


def test_tokenizer_round_trips_ascii_with_single_digits(tiny_dirs):
    tok = load_tokenizer(tiny_dirs["llama"])
    for text in ["12+34=46", "the answer is \\boxed{7}", "  spaces\tand\nnewlines ", "Use 3 5 to make 8: (3+5)"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text and tok.unk_token_id not in ids
    assert len(tok("1234567")["input_ids"]) == 7  # digits are single tokens (helps arithmetic tasks)
    assert len(tok) == 160
    ids = tok("é🙂")["input_ids"]  # outside printable ASCII: <unk>, never a crash
    assert ids == [tok.unk_token_id] * 2


def test_tiny_is_deterministic(tmp_path):
    a = init_tiny(tmp_path / "a", seed=5)
    b = init_tiny(tmp_path / "b", seed=5)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    with pytest.raises(FileExistsError):
        init_tiny(a)


def test_resolve_builds_default_into_run_root(tmp_path):
    cfg = load_config(None, [f"run.root={tmp_path}"])
    path = resolve_model_path(cfg)
    assert path.is_relative_to(tmp_path / ".cache") and (path / "config.json").is_file()
    assert resolve_model_path(cfg) == path  # cached, not rebuilt


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelPathError, match="no config.json there"):
        resolve_model_path(load_config(None, [f"model.path={tmp_path}"]))
    with pytest.raises(ModelPathError, match="is not a directory"):
        load_tokenizer(tmp_path / "nope")


def test_tokenizer_without_eos_is_rejected(tiny_dirs, tmp_path):
    import json
    import shutil

    d = tmp_path / "noeos"
    shutil.copytree(tiny_dirs["llama"], d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("eos_token", None)
    cfg.pop("pad_token", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelPathError, match="has no EOS token"):
        load_tokenizer(d)
