"""Bucket planning, pack/unpack round trips, checksums and HF name mapping (rlpt/weights.py)."""

from __future__ import annotations

import pickle

import pytest
import torch

from rlpt.weights import (
    Bucket,
    SyncPlan,
    TensorSlot,
    hf_param_name,
    pack,
    pack_parts,
    plan_buckets,
    state_checksum,
    unpack,
)

pytestmark = pytest.mark.unit

F32, BF16 = torch.float32, torch.bfloat16


def raw_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)  # bit-exact compare, NaN-safe


def layout(plan: SyncPlan) -> list[tuple[str, list[tuple[str, int, int]]]]:
    return [(b.dtype, [(s.name, s.offset, s.numel) for s in b.slots]) for b in plan.buckets]


def test_plan_boundaries_offsets_and_dtype_split() -> None:
    specs = [
        ("a", (2, 3), F32),    # 24 B
        ("n1", (4,), BF16),    # 8 B
        ("b", (4,), F32),      # 16 B -> a+b = 40 B fits in 40
        ("c", (1,), F32),      # 4 B -> would be 44 B: new bucket
        ("n2", (16,), BF16),   # 32 B -> n1+n2 = 40 B fits
        ("big", (20,), F32),   # 80 B > 40: alone
        ("d", (), F32),        # scalar, 4 B: c+d would fit but big closed c's bucket first
    ]
    plan = plan_buckets(specs, bucket_bytes=40)
    assert layout(plan) == [
        ("float32", [("a", 0, 6), ("b", 6, 4)]),
        ("bfloat16", [("n1", 0, 4), ("n2", 4, 16)]),
        ("float32", [("c", 0, 1)]),
        ("float32", [("big", 0, 20)]),
        ("float32", [("d", 0, 1)]),
    ]
    assert [b.numel for b in plan.buckets] == [10, 20, 1, 20, 1]
    assert plan.buckets[1].slots[1].shape == (16,) and plan.buckets[4].slots[0].shape == ()
    assert plan.num_tensors == 7
    assert plan.total_bytes == 24 + 16 + 8 + 32 + 4 + 80 + 4
    assert plan.names() == ["a", "b", "n1", "n2", "c", "big", "d"]
    assert all(b.nbytes <= 40 or len(b.slots) == 1 for b in plan.buckets)


def test_plan_is_small_and_picklable() -> None:
    specs = [(f"layers.{i}.weight", (256, 256), BF16) for i in range(64)]
    plan = plan_buckets(specs, bucket_bytes=1 << 20)
    blob = pickle.dumps(plan)
    assert pickle.loads(blob) == plan
    assert len(blob) < 10_000
    assert len(plan.buckets) == 8 and all(b.nbytes == 1 << 20 for b in plan.buckets)


@pytest.mark.parametrize("bad", [0, -1])
def test_plan_rejects_nonpositive_bucket_bytes(bad: int) -> None:
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets([("a", (1,), F32)], bucket_bytes=bad)


def test_plan_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="'w'"):
        plan_buckets([("w", (1,), F32), ("w", (2,), BF16)], bucket_bytes=64)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_pack_unpack_round_trip_bit_exact(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {name: torch.randn(shape, generator=g).to(dtype) for name, shape in
               [("x", (3, 5)), ("y", (7,)), ("z", ()), ("empty", (0, 4))]}
    tensors["t"] = torch.randn(4, 6, generator=g).to(dtype).t()  # non-contiguous source
    plan = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in tensors.items()], bucket_bytes=64)
    assert len(plan.buckets) > 1
    out: dict[str, torch.Tensor] = {}
    for bucket in plan.buckets:
        flat = pack(bucket, tensors)
        assert flat.dim() == 1 and flat.dtype == dtype and flat.numel() == bucket.numel
        out.update(unpack(bucket, flat))
    assert out.keys() == tensors.keys()
    for name, t in tensors.items():
        assert out[name].shape == t.shape and out[name].dtype == t.dtype
        assert torch.equal(raw_bytes(out[name]), raw_bytes(t))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 4).to(BF16)
        self.norm = torch.nn.LayerNorm(4)  # fp32 params between bf16 ones
        self.proj = torch.nn.Linear(4, 3, bias=True).to(BF16)
        self.register_buffer("rope", torch.linspace(0, 1, 6, dtype=BF16))
        self.register_buffer("step", torch.tensor(7, dtype=torch.int64))


def test_mixed_dtype_state_dict_round_trip_and_out_reuse() -> None:
    torch.manual_seed(0)
    src = Tiny()
    dst = Tiny()
    torch.nn.init.zeros_(dst.proj.weight)
    state = src.state_dict()
    plan = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in state.items()], bucket_bytes=1 << 20)
    assert sorted(b.dtype for b in plan.buckets) == ["bfloat16", "float32", "int64"]
    params = dict(src.named_parameters()) | dict(src.named_buffers())  # requires_grad sources
    buffers = [pack(b, params) for b in plan.buckets]
    assert not any(buf.requires_grad for buf in buffers)
    reused = [pack(b, params, out=buf) for b, buf in zip(plan.buckets, buffers)]
    assert all(r.data_ptr() == buf.data_ptr() for r, buf in zip(reused, buffers))
    loaded = {n: v for b, buf in zip(plan.buckets, reused) for n, v in unpack(b, buf)}
    dst.load_state_dict(loaded)
    assert state_checksum(dst.state_dict().items()) == state_checksum(state.items())


def test_unpack_returns_views() -> None:
    bucket = plan_buckets([("a", (2, 2), F32), ("b", (3,), F32)], bucket_bytes=1024).buckets[0]
    flat = torch.arange(7, dtype=F32)
    views = dict(unpack(bucket, flat))
    assert views["b"].tolist() == [4.0, 5.0, 6.0]
    flat[5] = -1.0
    assert views["b"].tolist() == [4.0, -1.0, 6.0]
    assert views["a"].data_ptr() == flat.data_ptr()


def test_shape_dtype_and_missing_errors_name_the_tensor() -> None:
    bucket = plan_buckets([("layer.w", (2, 2), F32)], bucket_bytes=1024).buckets[0]
    with pytest.raises(ValueError, match=r"'layer.w' has shape \(4,\).*\(2, 2\)"):
        pack(bucket, {"layer.w": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"'layer.w' has dtype bfloat16.*float32"):
        pack(bucket, {"layer.w": torch.zeros(2, 2, dtype=BF16)})
    with pytest.raises(ValueError, match="'layer.w'.*missing"):
        pack(bucket, {"other": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="out buffer"):
        pack(bucket, {"layer.w": torch.zeros(2, 2)}, out=torch.zeros(5))
    with pytest.raises(ValueError, match="flat buffer"):
        unpack(bucket, torch.zeros(4, dtype=BF16))


def test_plan_dataclasses_are_frozen() -> None:
    slot = TensorSlot(name="a", shape=(1,), offset=0, numel=1)
    with pytest.raises(AttributeError):
        slot.offset = 3  # type: ignore[misc]
    assert Bucket(dtype="float32", numel=1, slots=(slot,)).nbytes == 4


def test_checksum_equal_state_order_independent_and_sensitive() -> None:
    g = torch.Generator().manual_seed(1)
    state = {"w": torch.randn(3, 4, generator=g).to(BF16), "b": torch.randn(4, generator=g), "s": torch.tensor(2)}
    same = {k: v.clone() for k, v in reversed(list(state.items()))}
    digest = state_checksum(state.items())
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert state_checksum(same.items()) == digest
    same["w"][1, 2] = same["w"][1, 2] + 1
    assert state_checksum(same.items()) != digest
    assert state_checksum({"w": state["w"].float(), "b": state["b"], "s": state["s"]}.items()) != digest
    assert state_checksum({"w2": state["w"], "b": state["b"], "s": state["s"]}.items()) != digest
    assert state_checksum({"w": state["w"].reshape(4, 3), "b": state["b"], "s": state["s"]}.items()) != digest
    with pytest.raises(ValueError, match="duplicate"):
        state_checksum([("b", state["b"]), ("b", state["b"])])


@pytest.mark.parametrize(("name", "expected"), [
    ("module.model.embed_tokens.weight", "model.embed_tokens.weight"),
    ("_orig_mod.lm_head.weight", "lm_head.weight"),
    ("module._orig_mod.model.norm.weight", "model.norm.weight"),
    ("_orig_mod.module.model.norm.weight", "model.norm.weight"),
    ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("model.module.weight", "model.module.weight"),  # only a leading wrapper prefix is stripped
    ("modules.x", "modules.x"),
])
def test_hf_param_name(name: str, expected: str) -> None:
    assert hf_param_name(name) == expected


def test_pack_parts_fills_the_bucket_part_by_part_and_checks_coverage() -> None:
    ts = {"a": torch.randn(2, 3), "b": torch.randn(4), "c": torch.randn(1)}
    bucket = plan_buckets([(k, tuple(v.shape), v.dtype) for k, v in ts.items()], bucket_bytes=1 << 10).buckets[0]
    assert bucket.subset(["c", "a", "zzz"]).slots == (bucket.slots[0], bucket.slots[2])
    whole = pack(bucket, ts)
    out = torch.full_like(whole, float("nan"))
    pack_parts(bucket, iter([{"b": ts["b"]}, {"a": ts["a"], "c": ts["c"]}]), out)
    assert torch.equal(raw_bytes(out), raw_bytes(whole))
    with pytest.raises(ValueError, match=r"\['c'\] are in the sync plan but came in no part"):
        pack_parts(bucket, iter([{"a": ts["a"], "b": ts["b"]}]), out)
    with pytest.raises(ValueError, match=r"\['a'\] came in two parts"):
        pack_parts(bucket, iter([{"a": ts["a"]}, {"a": ts["a"], "b": ts["b"], "c": ts["c"]}]), out)
