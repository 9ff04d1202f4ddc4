"""`rlpt rm train` and the reward-model scoring core (rlpt.reward_model) on the built-in tiny model: pair files in
the shapes rlpt and HF datasets write, the Bradley-Terry loss by hand, and a fit whose saved directory scores the
held-out pairs' chosen side higher."""

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlpt.cli import main
from rlpt.data.files import DataError
from rlpt.models.tiny import init_tiny
from rlpt.rm_train import read_pairs
from rlpt.types import Prompt

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("rm") / "base")


def test_pairs_as_rlpt_and_hf_datasets_write_them(tmp_path):
    dpo = tmp_path / "round_000000.parquet"  # the iterative-DPO loop's columns (rlpt.loops.dpo.write_pairs)
    pq.write_table(pa.Table.from_pylist([{"round": 0, "prompt_uid": "a", "prompt": "1+1=", "chosen": "2",
                                          "rejected": "3", "policy_version": 0}]), dpo)
    chat = tmp_path / "ultrafeedback.jsonl"  # HF preference sets: chosen/rejected as message lists
    chat.write_text(json.dumps({"prompt": "Hi?", "chosen": [{"role": "user", "content": "Hi?"},
                                                           {"role": "assistant", "content": "Hello!"}],
                                "rejected": [{"role": "user", "content": "Hi?"},
                                             {"role": "assistant", "content": "go away"}]}) + "\n")
    trl = tmp_path / "trl_conversational.jsonl"  # TRL's conversational preference format: the prompt as messages
    trl.write_text(json.dumps({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                               "chosen": [{"role": "assistant", "content": "4"}],
                               "rejected": [{"role": "assistant", "content": "5"}]}) + "\n")
    pairs = read_pairs([str(dpo), str(chat), str(trl)])
    assert [(p.prompt.text, p.chosen, p.rejected) for p in pairs] == [
        ("1+1=", "2", "3"), ("Hi?", "Hello!", "go away"), ("2+2?", "4", "5")]
    assert pairs[2].prompt.messages == (("system", "Be brief."), ("user", "2+2?"))


def test_bad_pair_files_name_the_file_row_and_column(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl: preference pairs need columns .* missing \['rejected'\]"):
        read_pairs([str(f)])
    f.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n"
                 + json.dumps({"prompt": "q", "chosen": None, "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl: row 1: empty \['chosen'\]"):
        read_pairs([str(f)])
    f.write_text(json.dumps({"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match="row 0: column 'chosen' ends with a 'user' message"):
        read_pairs([str(f)])


class Linear:
    """A stand-in reward model: the score of a row is the sum of its token ids times w (hand-checkable)."""

    device = "cpu"

    def __init__(self, w):
        self.w = w

    def __call__(self, input_ids, attention_mask):
        return type("Out", (), {"logits": (input_ids * attention_mask).sum(-1, keepdim=True).float() * self.w})


def test_bradley_terry_loss_by_hand(base):
    from transformers import AutoTokenizer

    from rlpt.reward_model import rm_text
    from rlpt.rm_train import Pair, pair_loss

    tok = AutoTokenizer.from_pretrained(base)
    tok.pad_token = tok.eos_token
    pairs = [Pair(Prompt("a", "1+1="), "2", "3"), Pair(Prompt("b", "2+2="), "4", "x")]
    loss, margin = pair_loss(Linear(0.01), tok, pairs)
    ids = lambda t: sum(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    want = [0.01 * (ids(rm_text(tok, p.prompt, p.chosen)) - ids(rm_text(tok, p.prompt, p.rejected))) for p in pairs]
    assert margin.tolist() == pytest.approx(want)
    assert float(loss) == pytest.approx(sum(-math.log(1 / (1 + math.exp(-m))) for m in want) / 2)


def test_rm_train_fits_pairs_labelled_by_the_verifier_and_saves_a_loadable_model(base, tmp_path, capsys):
    from transformers import AutoTokenizer

    from rlpt.reward_model import load_reward_model, score_items
    from tests.reward_pairs import write_pairs

    pairs = write_pairs(AutoTokenizer.from_pretrained(base), tmp_path / "pairs.parquet", per_prompt=5)
    out = tmp_path / "rm"
    assert main(["rm", "train", "--pairs", str(pairs), "--model", str(base), "--out", str(out), "--epochs", "3",
                 "--lr", "1e-3", "--holdout", "0.2"]) == 0
    report = json.loads((out / "rlpt_rm_train.json").read_text())
    assert report["pairs_trained"] + report["pairs_held_out"] == pq.read_table(pairs).num_rows
    assert report["epochs"][-1]["holdout_accuracy"] >= 0.85, report["epochs"]  # chance is 0.5

    model, tok = load_reward_model(str(out))
    rows = pq.read_table(pairs).slice(0, 20).to_pylist()
    items = [(Prompt(str(i), r["prompt"]), side) for i, r in enumerate(rows) for side in (r["chosen"], r["rejected"])]
    verdicts = score_items(model, tok, items, batch_size=7, max_len=64, error_reward=-9.0)
    chosen, rejected = [v[0] for v in verdicts[0::2]], [v[0] for v in verdicts[1::2]]
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 16  # mostly trained-on pairs: nearly all ordered
    one_by_one = [score_items(model, tok, [it], 1, 64, -9.0)[0][0] for it in items[:6]]
    assert one_by_one == pytest.approx([v[0] for v in verdicts[:6]], abs=1e-4)  # padding does not change a score

    long = [(Prompt("l", "1+1=" * 40), "2")]
    assert score_items(model, tok, long, 4, 64, -9.0) == [(-9.0, None, {}, "too_long: 161 tokens > max_len 64")]
    capsys.readouterr()
    assert main(["rm", "train", "--pairs", str(pairs), "--model", str(base), "--out", str(out)]) != 0
    assert f"{out} already exists" in capsys.readouterr().err


def test_rm_train_refuses_bad_settings(tmp_path, capsys):
    assert main(["rm", "train", "--pairs", "x.parquet", "--model", "m", "--out", str(tmp_path / "o"),
                 "--epochs", "0", "--batch-size", "0"]) != 0
    assert "--epochs 0, --batch-size 0" in capsys.readouterr().err
