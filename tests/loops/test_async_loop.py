"""The asynchronous online loop (rollout.max_staleness >= 1) against in-process fakes: which policy version
generated each step (deterministic in wait mode), the strict bound in the rollouts file, a slow learner waited
for (wait) or its stale groups dropped and regenerated (drop), exact resume from the checkpointed in-flight steps,
streaming verification, and a producer failure ending the run with its own error."""

import random
import time

import pytest

from rlpt.loops import async_online
from rlpt.loops.common import LoopState, latest_checkpoint
from rlpt.metrics import read_metrics
from rlpt.rollout_log import read_rollouts
from rlpt.types import Rollout
from tests.loops.test_online_loop import FakeRollout, FakeVerifier, make, prompts

pytestmark = pytest.mark.loops


class ChunkedRollout(FakeRollout):
    """The fake engines with the pool's streaming hook: two chunks per request, each reported when done."""

    def generate(self, prompts, seeds, spec, account=True, on_chunk=None):
        half = max(1, len(prompts) // 2)
        out = []
        for start in range(0, len(prompts), half):
            chunk = super().generate(prompts[start:start + half], seeds[start:start + half], spec, account)
            if on_chunk is not None:
                on_chunk(start, chunk)
            out += chunk
        return out


def make_async(tmp_path, *overrides, slow_learner_s=0.0):
    cfg, _, _, w = make(tmp_path, "rollout.max_staleness=1", *overrides)
    ro = ChunkedRollout()
    w.rollout, w.sync.rollout = ro, ro
    if slow_learner_s:
        train = w.learner.train_step

        def slow(batch, step):
            time.sleep(slow_learner_s)
            return train(batch, step)
        w.learner.train_step = slow
    return cfg, ro, w


def versions_by_step(run_dir):
    t = read_rollouts(run_dir)
    steps, versions = t.column("step").to_pylist(), t.column("policy_version").to_pylist()
    return {s: sorted(set(v for st, v in zip(steps, versions) if st == s)) for s in sorted(set(steps))}


@pytest.mark.parametrize("K", [1, 2])
def test_wait_mode_trains_step_s_on_the_weights_after_step_s_minus_K_minus_1(tmp_path, K):
    cfg, ro, w = make_async(tmp_path, f"rollout.max_staleness={K}", "run.steps=6")
    async_online.run(cfg, w, prompts(10), tmp_path, pad_id=0)
    assert versions_by_step(tmp_path) == {s: [max(0, s - K)] for s in range(6)}
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["policy_version"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["staleness/max"] for r in rows] == [min(s, K) for s in range(6)]
    assert all(r["async/dropped_groups"] == 0 for r in rows)
    t = read_rollouts(tmp_path)
    assert all(t.column("trained").to_pylist())
    gap = [u - v for u, v in zip(t.column("learner_version").to_pylist(), t.column("policy_version").to_pylist())]
    assert max(gap) == K and min(gap) == 0
    assert len(set(ro.seeds)) == len(ro.seeds) == 6 * 4  # every prompt of every step generated once


def test_wait_mode_is_deterministic_and_waits_for_a_slow_learner(tmp_path):
    runs = []
    for i in range(2):
        cfg, ro, w = make_async(tmp_path / str(i), "run.steps=5", slow_learner_s=0.05 * i)
        async_online.run(cfg, w, prompts(10), tmp_path / str(i), pad_id=0)
        runs.append((ro.seeds, [b.input_ids_B_T.tolist() for b in w.learner.batches],
                     [b.advantages_B_T.tolist() for b in w.learner.batches], versions_by_step(tmp_path / str(i))))
    assert runs[0] == runs[1]  # the same samples, versions and batches whatever the learner's speed
    rows = read_metrics(tmp_path / "1" / "metrics.jsonl")
    assert sum(r["timing/producer_wait"] for r in rows) > 0.1  # the producer waited for the slow learner


def test_drop_mode_drops_stale_groups_of_a_slow_learner_and_regenerates_them(tmp_path):
    cfg, ro, w = make_async(tmp_path, "rollout.stale=drop", "run.steps=6", slow_learner_s=0.2)
    async_online.run(cfg, w, prompts(40), tmp_path, pad_id=0)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert sum(r["async/dropped_groups"] for r in rows) > 0
    t = read_rollouts(tmp_path)
    trained = [(u, v) for u, v, k in zip(t.column("learner_version").to_pylist(),
                                          t.column("policy_version").to_pylist(), t.column("trained").to_pylist()) if k]
    assert trained and all(u - v <= 1 for u, v in trained)  # nothing past the bound was trained on ...
    assert any(u - v > 1 for u, v, k in zip(t.column("learner_version").to_pylist(),
                                            t.column("policy_version").to_pylist(), t.column("trained").to_pylist())
               if not k)  # ... though stale samples were generated (and logged, untrained)
    assert all(b.num_rows == 16 for b in w.learner.batches)  # every batch was refilled to full size


def test_resume_trains_on_the_checkpointed_in_flight_samples_exactly(tmp_path):
    cfg, _, w = make_async(tmp_path / "full", "rollout.max_staleness=2", "run.steps=6")
    async_online.run(cfg, w, prompts(10), tmp_path / "full", pad_id=0)
    full = [(b.input_ids_B_T.tolist(), b.advantages_B_T.tolist()) for b in w.learner.batches]

    split = tmp_path / "split"
    cfg, _, w = make_async(split, "rollout.max_staleness=2", "run.steps=6", "run.checkpoint_every=3")

    class Preempted(Exception):
        pass

    def preempt(step, metrics):
        if step == 2:
            raise Preempted
    with pytest.raises(Preempted):
        async_online.run(cfg, w, prompts(10), split, pad_id=0, on_step=preempt)
    first = [(b.input_ids_B_T.tolist(), b.advantages_B_T.tolist()) for b in w.learner.batches]
    state = LoopState.read(latest_checkpoint(split) / "loop_state.json")
    assert state.next_step == 3 and [d["step"] for d in state.in_flight] == [3, 4]  # K steps ahead, finished
    cfg, ro, w = make_async(split, "rollout.max_staleness=2", "run.steps=6", "run.checkpoint_every=3")
    ro.version = state.policy_version  # what the resume's sync gives the engines
    async_online.run(cfg, w, prompts(10), split, pad_id=0, resume=state)
    second = [(b.input_ids_B_T.tolist(), b.advantages_B_T.tolist()) for b in w.learner.batches]
    assert first + second == full
    assert len(ro.seeds) == 4  # only step 5 was generated after the resume (steps 3, 4 came from the checkpoint)
    assert versions_by_step(split) == versions_by_step(tmp_path / "full")


def test_a_producer_failure_ends_the_run_with_its_error(tmp_path):
    class Breaks(FakeVerifier):
        calls = 0

        def score(self, rollouts):
            Breaks.calls += 1
            if Breaks.calls == 5:
                raise RuntimeError("verifier-0 is on fire")
            return super().score(rollouts)

    cfg, _, w = make_async(tmp_path, "run.steps=6")
    w.verifier = Breaks()
    with pytest.raises(RuntimeError, match="verifier-0 is on fire"):
        async_online.run(cfg, w, prompts(10), tmp_path, pad_id=0)


def test_chunks_are_scored_as_they_come_back(tmp_path):
    scored_during_generation = []

    class Watching(ChunkedRollout):
        def generate(self, prompts, seeds, spec, account=True, on_chunk=None):
            def watch(start, chunk):
                on_chunk(start, chunk)
                scored_during_generation.append(start)
            return super().generate(prompts, seeds, spec, account, watch)

    cfg, _, w = make_async(tmp_path, "run.steps=2")
    w.rollout = w.sync.rollout = Watching()
    async_online.run(cfg, w, prompts(10), tmp_path, pad_id=0)
    assert scored_during_generation == [0, 2, 0, 2]  # two chunks per step, each handed to the verifier at once
    assert read_rollouts(tmp_path).num_rows == 2 * 16


def test_dynamic_sampling_refills_in_the_producer_and_only_groups_with_signal_are_trained(tmp_path):
    cfg, ro, w = make_async(tmp_path, "rollout.max_staleness=2", "algorithm.grpo.dynamic_sampling=true",
                            "algorithm.grpo.max_resample_tries=5")
    async_online.run(cfg, w, prompts(12, same_every=3), tmp_path, pad_id=0)
    for batch in w.learner.batches:
        rows = batch.advantages_B_T.abs().sum(dim=1).view(-1, 4).sum(dim=1)
        assert bool((rows > 0).all())  # no zero-advantage group was kept
    kept = [r["dynamic/kept_frac"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert all(0 < k < 1 for k in kept)
    t = read_rollouts(tmp_path)
    assert t.num_rows > 4 * 16 and 0 < sum(t.column("trained").to_pylist()) < t.num_rows
    assert len(set(ro.seeds)) == len(ro.seeds)  # refills of a step draw new seeds


class SegmentRollout(ChunkedRollout):
    """Fake engines that sample several tokens: token t of a sample is a function of (seed, t) in 1..3, and the
    response ends (finish "stop") at a 3; the text is decoded from every response token (prefix + new)."""

    def __init__(self, delay_s=0.0):
        super().__init__()
        self.calls, self.delay_s = [], delay_s

    def generate(self, prompts, seeds, spec, account=True, on_chunk=None, prefix_lens=None):
        self.calls.append((list(seeds), spec.n, spec.max_tokens, prefix_lens))
        time.sleep(self.delay_s)
        out = []
        for j, (p, seed) in enumerate(zip(prompts, seeds)):
            prefix = tuple(p.prompt_ids[len(p.prompt_ids) - prefix_lens[j]:]) if prefix_lens else ()
            for i in range(spec.n):
                rng = random.Random(seed + i)
                ids = []
                while len(ids) < spec.max_tokens:
                    ids.append(rng.randint(1, 3))
                    if ids[-1] == 3:
                        break
                reason = "stop" if ids[-1] == 3 else "length"
                text = "1" if (prefix + tuple(ids)).count(2) % 2 else "0"
                out.append(Rollout(p, i, tuple(ids), (-0.5,) * len(ids), text, reason, self.version))
        return out


def test_segments_continue_from_the_exact_ids_with_new_seeds_and_stamp_every_token():
    from rlpt.loops.segments import generate_in_segments
    from rlpt.types import SamplingSpec

    ro = SegmentRollout()
    spec = SamplingSpec(n=2, max_tokens=5, temperature=1.0)

    def gen(batch, seeds, spec, prefix_lens):
        ro.version += 1  # as if a sync came between every two segments
        return ro.generate(batch, seeds, spec, prefix_lens=prefix_lens)
    ps = prompts(3)
    out = generate_in_segments(gen, ps, [10, 20, 30], spec, tokens=2)
    assert [(r.prompt.uid, r.sample_index) for r in out] == [(p.uid, i) for p in ps for i in range(2)]
    assert all(r.prompt.prompt_ids == (3, 4) for r in out)  # the original prompt, not a continuation
    for r in out:
        assert len(r.response_ids_T) == len(r.logprobs_T) == len(r.versions_T) <= 5
        assert r.finish_reason == ("stop" if r.response_ids_T[-1] == 3 else "length")
        assert r.versions_T == tuple(1 + t // 2 for t in range(len(r.response_ids_T)))  # segment k: version k+1
        assert r.policy_version == 1 and r.newest_version == r.versions_T[-1]
        assert r.text == ("1" if r.response_ids_T.count(2) % 2 else "0")  # decoded from the whole response
    firsts, later = ro.calls[0], ro.calls[1:]
    assert firsts == ([10, 20, 30], 2, 2, None) and later
    for seeds, n, max_tokens, prefix_lens in later:  # continuations: one sample each, fresh seeds, exact prefix
        assert n == 1 and max_tokens <= 2 and not set(seeds) & {10, 11, 20, 21, 30, 31}
        assert len(set(prefix_lens)) == 1


def test_partial_rollouts_take_new_weights_mid_completion_within_the_bound(tmp_path):
    # slow engines (30 ms a segment), a fast learner: the sync after step t lands while step t + 1 is generated
    cfg, _, w = make_async(tmp_path, "rollout.partial_tokens=1", "rollout.max_new_tokens=6", "run.steps=6")
    ro = SegmentRollout(delay_s=0.03)
    w.rollout = w.sync.rollout = ro
    async_online.run(cfg, w, prompts(10), tmp_path, pad_id=0)
    t = read_rollouts(tmp_path).to_pylist()
    assert all(r["learner_version"] - r["policy_version"] <= 1 for r in t if r["trained"])
    assert any(r["newest_version"] > r["policy_version"] for r in t)  # a sync came between two segments
    assert all(r["newest_version"] <= r["learner_version"] for r in t)
    assert all(b.num_rows == 16 for b in w.learner.batches)
