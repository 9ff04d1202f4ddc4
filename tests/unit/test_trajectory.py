"""Token-in/token-out trajectories (rlpt.trajectory): masks, logprobs and versions of hand-built trajectories, and
observation ids that, appended to the sampled ids, decode to exactly what each real chat template renders for the
whole conversation (real tokenizers: the SentencePiece and Tekken files mistral_common ships, a byte-level BPE)."""

import pytest

from rlpt.trajectory import Trajectory, observation_ids, turn_end
from rlpt.types import Prompt
from tests.ray.families import TEMPLATE_TOKENS, TEMPLATES, TOKENIZERS

pytestmark = pytest.mark.unit


def test_masks_logprobs_and_versions_of_a_hand_built_trajectory():
    p = Prompt("u", "2+2=", prompt_ids=(5, 6, 7))
    t = (Trajectory(p, 0).with_model_turn((10, 11), (-0.5, -0.25), version=3)
         .with_observation((20, 21, 22)).with_model_turn((12,), (-1.0,), version=4))
    assert t.context_ids == (5, 6, 7, 10, 11, 20, 21, 22, 12)
    assert t.response_ids_T == (10, 11, 20, 21, 22, 12)
    assert t.loss_mask_T == (1, 1, 0, 0, 0, 1)
    assert t.logprobs_T == (-0.5, -0.25, 0.0, 0.0, 0.0, -1.0)
    assert t.versions_T == (3, 3, 3, 3, 3, 4) and t.model_turns == 2
    with pytest.raises(ValueError, match="one logprob per token"):
        t.with_model_turn((1, 2), (-0.1,), version=4)


def tokenizer_with(name: str, template: str, tmp_path):
    tok = TOKENIZERS[name](tmp_path)
    specials, eos = TEMPLATE_TOKENS[template]
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials})
    if template != "plain":
        tok.chat_template = TEMPLATES[template]
    if eos:
        tok.eos_token = eos[0]
    return tok


CELLS = [("byte-bpe", "chatml", "tool"), ("tekken131k", "llama3", "user"), ("spm32k-inst", "inst", "user"),
         ("byte-bpe", "chatml", "user")]


@pytest.mark.parametrize("name,template,role", CELLS, ids=[f"{n}-{t}-{r}" for n, t, r in CELLS])
def test_appended_ids_decode_to_the_templates_own_rendering(name, template, role, tmp_path):
    tok = tokenizer_with(name, template, tmp_path)
    question, answer, observation = "What is 17*3?", "Let me run it: print(17*3)", "51\n(exit 0)"
    prompt_text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                          add_generation_prompt=True)
    prompt_ids = tuple(tok(prompt_text, add_special_tokens=False)["input_ids"])
    end = tok.eos_token_id  # what the engine samples to end the turn (the template's end-of-turn token)
    sampled = tuple(tok(answer, add_special_tokens=False)["input_ids"]) + (end,)
    t = Trajectory(Prompt("u", question, prompt_ids=prompt_ids), 0).with_model_turn(
        sampled, (-0.1,) * len(sampled), version=1)
    t = t.with_observation(tuple(observation_ids(tok, observation, role, last_token=sampled[-1])))
    # What the model said is what its sampled tokens decode to in context (SentencePiece's "▁Let" is " Let" there).
    said = tok.decode(list(prompt_ids + sampled[:-1]))[len(tok.decode(list(prompt_ids))):]
    whole = tok.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": said},
                                     {"role": role, "content": observation}], tokenize=False,
                                    add_generation_prompt=True)
    assert tok.decode(list(t.context_ids)) == whole
    assert t.loss_mask_T == (1,) * len(sampled) + (0,) * (len(t.response_ids_T) - len(sampled))


def test_a_turn_cut_by_the_token_limit_gets_the_whole_end_of_turn(tmp_path):
    tok = tokenizer_with("byte-bpe", "chatml", tmp_path)
    assert turn_end(tok) == "<|im_end|>\n"
    cut = tok("half an ans", add_special_tokens=False)["input_ids"]
    ids = observation_ids(tok, "go on", "user", last_token=cut[-1])
    assert tok.decode(ids) == "<|im_end|>\n<|im_start|>user\ngo on<|im_end|>\n<|im_start|>assistant\n"
    ended = observation_ids(tok, "go on", "user", last_token=tok.convert_tokens_to_ids("<|im_end|>"))
    assert tok.decode(ended) == "\n<|im_start|>user\ngo on<|im_end|>\n<|im_start|>assistant\n"


def test_without_a_chat_template_an_observation_is_its_text_between_newlines(tmp_path):
    tok = tokenizer_with("byte-bpe", "plain", tmp_path)
    assert turn_end(tok) is None
    assert tok.decode(observation_ids(tok, "51", "tool", last_token=None)) == "\n51\n"


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    tok = tokenizer_with("byte-bpe", "chatml", tmp_path)
    # e.g. a template that drops the reasoning of earlier assistant turns once a new message follows
    tok.chat_template = ("{% for m in messages %}{% if loop.last or m['role'] != 'assistant' %}<|im_start|>"
                         "{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ValueError, match="append-only template"):
        observation_ids(tok, "x", "user", last_token=None)
