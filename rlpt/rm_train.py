"""`rlpt rm train`: fit a Bradley-Terry reward model on preference pairs and save an HF directory that a
`reward.terms` entry of kind `model` loads.

Pairs come from the iterative-DPO loop's `pairs/round_*.parquet` or any parquet/JSONL file with prompt, chosen
and rejected columns: strings, or (the shape HF preference datasets export) chosen/rejected as lists of
{role, content} messages whose last one is the assistant's answer. The loss is -log sigmoid(r(chosen) - r(rejected))
on the one-label head of `AutoModelForSequenceClassification` built from a base model directory; the text is
rendered exactly as the scoring actor renders rollouts (rlpt.reward_model.rm_text).

One process, not the DeepSpeed learner group: the learner machinery is built around a causal-LM policy (logprob
losses, engine sync, resumable online loops), while fitting a reward model on pairs is one short supervised job
that a single GPU (or CPU) holds for the model sizes used as reward terms here. A reward model trained elsewhere
(TRL's RewardTrainer, accelerate) is an HF sequence-classification directory too and loads the same way.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from rlpt.data.files import DataError, read_table
from rlpt.types import Prompt


@dataclass(frozen=True)
class RMTrainSettings:
    pairs: tuple[str, ...]
    model: str
    out: str
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 16
    max_len: int = 512
    holdout: float = 0.1
    seed: int = 0


def check_settings(s: RMTrainSettings) -> None:
    from rlpt.errors import UsageError

    bad = [f"--{k.replace('_', '-')} {v}" for k, v, ok in (
        ("epochs", s.epochs, s.epochs >= 1), ("batch_size", s.batch_size, s.batch_size >= 1),
        ("max_len", s.max_len, s.max_len >= 2), ("lr", s.lr, s.lr > 0), ("holdout", s.holdout, 0 <= s.holdout < 1))
        if not ok]
    if bad:
        raise UsageError(f"rm train: {', '.join(bad)}: epochs, batch size >= 1, max len >= 2, lr > 0, 0 <= holdout < 1")


@dataclass(frozen=True)
class Pair:
    prompt: Prompt
    chosen: str
    rejected: str


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    train_loss: float
    holdout_accuracy: float | None  # share of held-out pairs with r(chosen) > r(rejected)
    holdout_margin: float | None  # mean r(chosen) - r(rejected) over them


def _answer_text(value: Any, path: Path, row: int, column: str) -> str:
    """A chosen/rejected cell: a string, or a message list whose last message is the assistant's answer."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        if value[-1].get("role", "assistant") != "assistant":
            raise DataError(f"{path}: row {row}: column '{column}' ends with a {value[-1].get('role')!r} message; "
                            f"its last message must be the assistant's answer")
        return str(value[-1]["content"])
    raise DataError(f"{path}: row {row}: column '{column}' must be a string or a list of {{role, content}} "
                    f"messages, got {type(value).__name__}")


def _prompt(value: Any, path: Path, row: int) -> Prompt:
    """A prompt cell: a string, or (TRL's conversational format) a list of {role, content} messages."""
    uid = f"{path.name}:{row}"
    if isinstance(value, str):
        return Prompt(uid=uid, text=value)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        turns = tuple((str(m.get("role", "user")), str(m["content"])) for m in value)
        return Prompt(uid=uid, text=turns[-1][1], messages=turns)
    raise DataError(f"{path}: row {row}: column 'prompt' must be a string or a list of {{role, content}} messages, "
                    f"got {type(value).__name__}")


def read_pairs(paths: Sequence[str]) -> list[Pair]:
    """Every (prompt, chosen, rejected) of the files, in file then row order; a clear error naming file, row and
    column for anything missing or malformed."""
    pairs: list[Pair] = []
    for raw in paths:
        path = Path(raw)
        table = read_table(path)
        missing = [c for c in ("prompt", "chosen", "rejected") if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: preference pairs need columns prompt, chosen and rejected; missing {missing} "
                            f"(columns: {table.column_names})")
        for row, rec in enumerate(table.select(["prompt", "chosen", "rejected"]).to_pylist()):
            if any(rec[c] is None for c in rec):
                raise DataError(f"{path}: row {row}: empty {[c for c in rec if rec[c] is None]}")
            pairs.append(Pair(_prompt(rec["prompt"], path, row),
                              _answer_text(rec["chosen"], path, row, "chosen"),
                              _answer_text(rec["rejected"], path, row, "rejected")))
    if not pairs:
        raise DataError(f"no preference pairs in {list(paths)}")
    return pairs


def pair_loss(model: Any, tokenizer: Any, pairs: Sequence[Pair]) -> tuple[Any, Any]:
    """(mean Bradley-Terry loss, r(chosen) - r(rejected) per pair [B]) in one forward pass over 2B rows."""
    import torch.nn.functional as F

    from rlpt.reward_model import encode, rewards_of, rm_text

    texts = [rm_text(tokenizer, p.prompt, p.chosen) for p in pairs] + [
        rm_text(tokenizer, p.prompt, p.rejected) for p in pairs]
    r = rewards_of(model, *encode(tokenizer, texts))
    margin = r[:len(pairs)] - r[len(pairs):]
    return -F.logsigmoid(margin).mean(), margin


def _fits(tokenizer: Any, pair: Pair, max_len: int) -> bool:
    from rlpt.reward_model import rm_text

    texts = [rm_text(tokenizer, pair.prompt, pair.chosen), rm_text(tokenizer, pair.prompt, pair.rejected)]
    return all(len(ids) <= max_len for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def train(s: RMTrainSettings, log: Any = print) -> list[EpochReport]:
    """Fit and save (atomically: the output directory appears complete or not at all)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlpt.reward_model import device, set_padding

    from transformers.utils import logging as hf_logging

    check_settings(s)
    out = Path(s.out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another --out or remove it")
    # A quiet console: the load report (lm_head unused, the new head "MISSING": expected here) and the
    # loading/writing bars are transformers' chatter, not the user's problem.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not torch.cuda.is_available():  # else save_pretrained's DeepSpeed probe warns "Setting accelerator to CPU"
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    tokenizer = AutoTokenizer.from_pretrained(s.model)
    model = AutoModelForSequenceClassification.from_pretrained(s.model, num_labels=1, dtype=torch.float32)
    set_padding(model, tokenizer)
    model.to(device())  # a GPU when there is one
    pairs = read_pairs(s.pairs)
    kept = [p for p in pairs if _fits(tokenizer, p, s.max_len)]
    if len(kept) < len(pairs):
        log(f"[rlpt] rm train: skipped {len(pairs) - len(kept)} of {len(pairs)} pairs longer than --max-len "
            f"{s.max_len} tokens")
    rng.shuffle(kept)
    n_hold = int(len(kept) * s.holdout)
    held, fit = kept[:n_hold], kept[n_hold:]
    if not fit:
        raise DataError(f"no pairs left to train on ({len(pairs)} read, {len(kept)} within --max-len, {n_hold} held "
                        f"out)")
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr)
    reports = []
    for epoch in range(s.epochs):
        model.train()
        rng.shuffle(fit)
        losses = []
        for i in range(0, len(fit), s.batch_size):
            loss, _ = pair_loss(model, tokenizer, fit[i:i + s.batch_size])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        reports.append(_evaluate(model, tokenizer, held, epoch, sum(losses) / len(losses), s.batch_size))
        r = reports[-1]
        held_txt = ("no held-out pairs" if r.holdout_accuracy is None else
                    f"held-out accuracy {r.holdout_accuracy:.3f}, margin {r.holdout_margin:.3f} ({len(held)} pairs)")
        log(f"[rlpt] rm train: epoch {epoch + 1}/{s.epochs}: loss {r.train_loss:.4f}, {held_txt}")
    _save(model, tokenizer, out, s, reports, len(fit), len(held))
    return reports


def _evaluate(model: Any, tokenizer: Any, held: Sequence[Pair], epoch: int, train_loss: float, batch_size: int
              ) -> EpochReport:
    import torch

    if not held:
        return EpochReport(epoch, train_loss, None, None)
    model.eval()
    with torch.inference_mode():
        margins = torch.cat([pair_loss(model, tokenizer, held[i:i + batch_size])[1]
                             for i in range(0, len(held), batch_size)])
    return EpochReport(epoch, train_loss, float((margins > 0).float().mean()), float(margins.mean()))


def _save(model: Any, tokenizer: Any, out: Path, s: RMTrainSettings, reports: Sequence[EpochReport],
          n_fit: int, n_held: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "rlpt_rm_train.json").write_text(json.dumps(
            {"settings": asdict(s), "pairs_trained": n_fit, "pairs_held_out": n_held,
             "epochs": [asdict(r) for r in reports]}, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"[rlpt] rm train: saved the reward model to {out}", file=sys.stderr)
