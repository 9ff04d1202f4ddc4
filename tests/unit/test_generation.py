"""rlpt.generation: the `hf` engine's sampling math (hand-computed) and its decoding loop, on a scripted model and on
a real transformers Llama (logprobs against a teacher-forced forward, rows independent of their batch)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rlpt.algorithms.common import token_logprobs
from rlpt.generation import draw, filtered_logits, generate, pick, row_seed, uniforms
from rlpt.types import SamplingSpec

pytestmark = pytest.mark.unit


def test_row_seeds_are_deterministic_distinct_and_64_bit():
    seeds = {row_seed(s, i) for s in range(50) for i in range(50)}
    assert len(seeds) == 2500
    assert all(0 <= s < 2**64 for s in seeds)
    assert row_seed(3, 4) == row_seed(3, 4)


def splitmix64(z: int) -> int:
    """The reference finaliser in plain Python integers."""
    m = (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_uniforms_are_a_counter_based_stream_per_row():
    golden = 0x9E3779B97F4A7C15
    u = uniforms([11, 2**63 + 5], 3)
    for r, s in enumerate((11, 2**63 + 5)):
        expected = [(splitmix64((s + (t + 1) * golden) % 2**64) >> 11) / 2**53 for t in range(3)]
        assert u[r].tolist() == expected
    assert torch.equal(uniforms([2**63 + 5], 3)[0], u[1])  # a row's draws depend on its seed alone
    assert row_seed(7, 2) == splitmix64((7 * golden + 3) % 2**64)
    big = uniforms(list(range(2000)), 5)
    assert 0.0 <= float(big.min()) and float(big.max()) < 1.0 and abs(float(big.mean()) - 0.5) < 0.01


def test_top_k_keeps_the_k_highest():
    out = filtered_logits(torch.tensor([[1.0, 4.0, 3.0, 2.0]]), top_k=2, top_p=1.0)
    assert out.tolist() == [[-math.inf, 4.0, 3.0, -math.inf]]


def test_top_p_keeps_the_smallest_set_reaching_p_and_always_the_best():
    # probabilities 0.2, 0.5, 0.3 (unsorted on purpose): ranked 0.5, 0.3, 0.2 with mass before 0, 0.5, 0.8
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    keep = lambda p: torch.isfinite(filtered_logits(logits, top_k=0, top_p=p))[0].tolist()  # noqa: E731
    assert keep(0.6) == [False, True, True]
    assert keep(0.5) == [False, True, False]  # 0.5 alone reaches 0.5
    assert keep(0.81) == [True, True, True]
    assert keep(0.01) == [False, True, False]


def test_inverse_cdf_draw():
    logits = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    got = [int(draw(logits, torch.tensor([u], dtype=torch.float64))) for u in (0.0, 0.1, 0.26, 0.49, 0.5, 0.99)]
    assert got == [0, 0, 1, 1, 2, 2]
    filtered = torch.tensor([[0.0, -math.inf, 0.0]])  # the middle token can never be drawn
    assert {int(draw(filtered, torch.tensor([u], dtype=torch.float64))) for u in torch.linspace(0, 0.999, 50)} == {0, 2}


def test_pick_returns_the_learners_logprob_not_the_filtered_one():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    spec = SamplingSpec(n=1, max_tokens=1, temperature=2.0, top_k=1)
    ids, logp = pick(logits, torch.tensor([0.7], dtype=torch.float64), spec)
    assert ids.tolist() == [0]  # top-k 1: only the best can be drawn
    z = [1.0, 0.5, 0.0]  # logits / T
    assert logp.item() == pytest.approx(1.0 - math.log(sum(math.exp(v) for v in z)), abs=1e-6)
    greedy_ids, greedy_logp = pick(logits, torch.tensor([0.7], dtype=torch.float64),
                                   SamplingSpec(n=1, max_tokens=1, temperature=0.0))
    assert greedy_ids.tolist() == [0]
    assert greedy_logp.item() == pytest.approx(torch.log_softmax(logits, -1)[0, 0].item(), abs=1e-6)


class Counter:
    """A scripted causal LM over 10 tokens: all mass on (last token + 1) % 10 (it needs no cache)."""

    def __call__(self, input_ids, attention_mask, position_ids, use_cache, past_key_values=None, logits_to_keep=0):
        nxt = (input_ids[:, -1:] + 1) % 10
        logits = torch.full((*nxt.shape, 10), -30.0).scatter(-1, nxt.unsqueeze(-1), 30.0)
        return SimpleNamespace(logits=logits, past_key_values=SimpleNamespace(batch_repeat_interleave=lambda n: None))


def test_loop_ends_rows_at_eos_stop_strings_and_length():
    spec = SamplingSpec(n=2, max_tokens=4)
    out = generate(Counter(), [[1], [6], [2]], [0, 1, 2], spec, eos_ids={9}, pad_id=0,
                   stopped=lambda ids: 4 in ids)
    assert [len(samples) for samples in out] == [2, 2, 2]
    first, second, third = (samples[0] for samples in out)
    assert (first.ids, first.finish_reason) == ([2, 3, 4], "stop")  # the stop string (here: token 4) appeared
    assert (second.ids, second.finish_reason) == ([7, 8, 9], "stop")  # EOS 9 kept, as vLLM keeps it
    assert (third.ids, third.finish_reason) == ([3, 4], "stop")
    assert out[0][1].ids == first.ids  # the scripted model is deterministic: both samples agree
    assert first.logprobs == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # log(1 - ~e^-60)
    long = generate(Counter(), [[0]], [0], SamplingSpec(n=1, max_tokens=3), eos_ids={9}, pad_id=0)
    assert (long[0][0].ids, long[0][0].finish_reason) == ([1, 2, 3], "length")


def test_a_cache_that_cannot_be_repeated_prefills_every_row():
    prefill_rows = []

    class NoRepeat(Counter):  # e.g. linear-attention cache layers have no batch_repeat_interleave
        def __call__(self, input_ids, *args, **kwargs):
            out = super().__call__(input_ids, *args, **kwargs)
            prefill_rows.append(input_ids.shape[0])
            return SimpleNamespace(logits=out.logits, past_key_values=SimpleNamespace())

    spec = SamplingSpec(n=3, max_tokens=2)
    got = generate(NoRepeat(), [[1], [5, 6]], [0, 1], spec, eos_ids={9}, pad_id=0)
    want = generate(Counter(), [[1], [5, 6]], [0, 1], spec, eos_ids={9}, pad_id=0)
    assert [[s.ids for s in g] for g in got] == [[s.ids for s in w] for w in want] == [[[2, 3]] * 3, [[7, 8]] * 3]
    assert prefill_rows[:2] == [2, 6]  # the distinct prompts, then every row once the repeat failed


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_logprobs_match_a_teacher_forced_forward_with_left_padding(llama):
    prompts = [[1, 5, 7], [2, 9, 11, 13, 4, 8], [3]]
    spec = SamplingSpec(n=2, max_tokens=6)
    out = generate(llama, prompts, [5, 6, 7], spec, eos_ids=set(), pad_id=0)
    for prompt, samples in zip(prompts, out):
        for s in samples:
            assert len(s.ids) == 6 and s.finish_reason == "length"
            full = torch.tensor([prompt + s.ids])
            with torch.no_grad():
                ref = token_logprobs(llama(input_ids=full).logits, full)[0, len(prompt):]
            assert torch.allclose(torch.tensor(s.logprobs), ref, atol=1e-5), (s.logprobs, ref.tolist())
    assert out[0][0].ids != out[0][1].ids or out[1][0].ids != out[1][1].ids  # samples of a prompt differ


def test_a_rows_completion_depends_on_its_seed_not_its_batch(llama):
    spec = SamplingSpec(n=3, max_tokens=8, top_p=0.9)
    alone = generate(llama, [[2, 9, 11]], [42], spec, eos_ids=set(), pad_id=0)[0]
    batched = generate(llama, [[1, 5], [2, 9, 11], [7, 7, 7, 7, 7]], [1, 42, 3], spec, eos_ids=set(), pad_id=0)[1]
    assert [s.ids for s in alone] == [s.ids for s in batched]
    other_seed = generate(llama, [[2, 9, 11]], [43], spec, eos_ids=set(), pad_id=0)[0]
    assert [s.ids for s in other_seed] != [s.ids for s in alone]
