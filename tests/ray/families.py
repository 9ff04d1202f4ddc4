"""Model directories the way users get them: written by plain transformers configs of real model families (not by
rlpt's factory), at tiny width but with each family's own features, with real tokenizers and chat templates.

Families: Llama 3 (GQA, llama3 RoPE scaling, untied), Qwen2.5 (qkv bias, tied embeddings), Qwen3 (q/k norm),
Mistral, Gemma (tied, (1 + w) RMSNorm, GeLU), Phi-3 (fused qkv and gate/up projections). Tokenizers: the real
SentencePiece (32k, byte fallback) and Tekken (131k) files that `mistral_common` ships, a byte-level BPE and a
character-level WordLevel trained here. Chat templates: ChatML, Llama-3 and `[INST]`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

MISTRAL_DATA = Path(__import__("mistral_common").__file__).parent / "data"
CHARS = list("0123456789+-*=:?,. abcdefghijklmnopqrstuvwxyzäöüßéè東京猫🚀")

TEMPLATES = {
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "llama3": ("<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
               "<|end_header_id|>\n\n{% endif %}"),
    "inst": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
             "{% elif m['role'] == 'system' %}{{ m['content'] }}\n\n{% else %}{{ m['content'] }}{{ eos_token }}"
             "{% endif %}{% endfor %}"),
}
# Special tokens a template needs, and the EOS tokens the model declares in generation_config.json (the first is
# the tokenizer's eos_token; Llama 3 and Qwen declare two).
TEMPLATE_TOKENS = {
    "chatml": (["<|im_start|>", "<|im_end|>", "<|endoftext|>"], ["<|im_end|>", "<|endoftext|>"]),
    "llama3": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"],
               ["<|eot_id|>", "<|end_of_text|>"]),
    "inst": ([], []),
    "plain": ([], []),
}


# ------------------------------------------------------------------------------------------------ tokenizers
def spm_tokenizer(name: str) -> Callable[[Path], Any]:
    def make(work: Path) -> Any:
        from transformers import LlamaTokenizer

        d = work / f"spm-{name}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(MISTRAL_DATA / name, d / "tokenizer.model")
        return LlamaTokenizer.from_pretrained(d)

    return make


def tekken_tokenizer(work: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    d = work / "tekken"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(MISTRAL_DATA / "tekken_240911.json", d / "tekken.json")
    tok = PreTrainedTokenizerFast.from_pretrained(d)  # transformers converts tekken.json (MistralConverter)
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    return tok


def byte_bpe_tokenizer(work: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"{a}+{b}={a + b} the answer is {a * b}. Grüße aus 東京 🚀" for a in range(40) for b in range(20)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def char_tokenizer(work: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()  # WordLevel joins tokens with spaces otherwise (preflight warns about that)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


TOKENIZERS: dict[str, Callable[[Path], Any]] = {
    "spm32k": spm_tokenizer("tokenizer.model.v1"),
    "spm32k-inst": spm_tokenizer("mistral_instruct_tokenizer_240323.model.v3"),
    "tekken131k": tekken_tokenizer,
    "byte-bpe": byte_bpe_tokenizer,
    "char": char_tokenizer,
}


# -------------------------------------------------------------------------------------------------- families
def _common(vocab: int, ids: dict[str, int], positions: int) -> dict[str, Any]:
    return {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": positions, **ids}


def llama3(vocab: int, ids: dict[str, int], positions: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**_common(vocab, ids, positions), num_key_value_heads=1, head_dim=32, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64})


def llama(vocab: int, ids: dict[str, int], positions: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**_common(vocab, ids, positions), num_key_value_heads=2, tie_word_embeddings=False)


def qwen25(vocab: int, ids: dict[str, int], positions: int) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(**_common(vocab, ids, positions), num_key_value_heads=1, tie_word_embeddings=True)


def qwen3(vocab: int, ids: dict[str, int], positions: int) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(**_common(vocab, ids, positions), num_key_value_heads=1, head_dim=32, tie_word_embeddings=True)


def mistral(vocab: int, ids: dict[str, int], positions: int) -> Any:
    from transformers import MistralConfig

    return MistralConfig(**_common(vocab, ids, positions), num_key_value_heads=1, head_dim=32, sliding_window=None)


def gemma(vocab: int, ids: dict[str, int], positions: int) -> Any:
    from transformers import GemmaConfig

    return GemmaConfig(**_common(vocab, ids, positions), num_key_value_heads=1, head_dim=32)


def phi3(vocab: int, ids: dict[str, int], positions: int) -> Any:
    from transformers import Phi3Config

    return Phi3Config(**_common(vocab, ids, positions), num_key_value_heads=2, tie_word_embeddings=False)


FAMILIES: dict[str, Callable[[int, dict[str, int], int], Any]] = {
    "llama3": llama3, "llama": llama, "qwen2.5": qwen25, "qwen3": qwen3, "mistral": mistral, "gemma": gemma,
    "phi3": phi3,
}


@dataclass(frozen=True)
class Cell:
    family: str
    tokenizer: str
    template: str  # a key of TEMPLATES, or "plain" (no chat template)
    positions: int = 256

    @property
    def name(self) -> str:
        return f"{self.family}-{self.tokenizer}-{self.template}"


def build_model_dir(cell: Cell, out: Path, work: Path, seed: int = 0) -> Path:
    """A random-init model of `cell.family` with its tokenizer and chat template, saved by transformers."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = TOKENIZERS[cell.tokenizer](work)
    specials, eos_tokens = TEMPLATE_TOKENS[cell.template]
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials})
    if cell.template != "plain":
        tok.chat_template = TEMPLATES[cell.template]
    if eos_tokens:
        tok.eos_token = eos_tokens[0]
    eos = [tok.convert_tokens_to_ids(t) for t in eos_tokens] or [tok.eos_token_id]
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos[0]
    vocab = (len(tok) + 63) // 64 * 64  # embedding rows padded up, as real checkpoints do
    ids = {"bos_token_id": bos, "eos_token_id": eos[0], "pad_token_id": eos[0]}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(FAMILIES[cell.family](vocab, ids, cell.positions), dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos if len(eos) > 1 else eos[0],
                                               pad_token_id=eos[0])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def chatml_arith_run(tmp_path: Path) -> list[str]:
    """A Qwen2.5-family directory (byte-level BPE, ChatML) and 32 chat-format arithmetic rows (`messages`,
    `answer`) under `tmp_path`: the config overrides that point a run at them."""
    import json

    model_dir = build_model_dir(Cell("qwen2.5", "byte-bpe", "chatml"), tmp_path / "model", tmp_path / "work")
    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}="}], "answer": str(a + b)} for a in range(1, 9)
            for b in range(1, 5)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"model.path={model_dir}", "data.task=null", f"data.path={tmp_path / 'data.jsonl'}",
            "data.columns.prompt=messages", f"run.root={tmp_path}"]
