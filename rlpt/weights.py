"""Bucketed weight packing for learner -> rollout-engine weight sync (DESIGN.md §3 "Weight sync", §6).

Why buckets: syncing one tensor at a time (one RPC + one broadcast + one load per parameter) grows to a large
share of step time at scale. Instead the learner packs many tensors into a few flat buffers of one dtype
(~hundreds of MB each), broadcasts each buffer once, and every engine unpacks zero-copy views of it.

Both sides must agree on the layout without sending it with every step, so the layout is a small frozen,
picklable `SyncPlan` (names, shapes, offsets; no tensors) computed once by `plan_buckets` and sent once.
`state_checksum` lets a probe prove engine == learner (and resume == uninterrupted run) bit for bit.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DeepSpeed/DDP wrapper, torch.compile wrapper
_PEFT_PREFIX = "base_model.model."
_LORA_PIECE = re.compile(r"^(?P<path>.+)\.lora_[AB]\.[^.]+\.weight$")


@dataclass(frozen=True)
class TensorSlot:
    """Where one named tensor lives in its bucket: elements [offset, offset + numel) reshaped to `shape`."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


@dataclass(frozen=True)
class Bucket:
    """One flat buffer of a single dtype (a string such as "bfloat16", so the plan pickles without torch state)."""

    dtype: str
    numel: int
    slots: tuple[TensorSlot, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_str(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.numel * self.torch_dtype.itemsize

    def subset(self, names: Iterable[str]) -> Bucket:
        """The same flat layout with only the named slots (to pack a bucket part by part)."""
        keep = set(names)
        return Bucket(dtype=self.dtype, numel=self.numel, slots=tuple(s for s in self.slots if s.name in keep))


@dataclass(frozen=True)
class SyncPlan:
    """The full layout: every synced tensor appears in exactly one slot of one bucket."""

    buckets: tuple[Bucket, ...]

    @property
    def num_tensors(self) -> int:
        return sum(len(b.slots) for b in self.buckets)

    @property
    def total_bytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    @property
    def max_bucket_bytes(self) -> int:
        """The largest bucket: what one reusable transfer buffer must hold."""
        return max((b.nbytes for b in self.buckets), default=0)

    def names(self) -> list[str]:
        return [s.name for b in self.buckets for s in b.slots]


def dtype_to_str(dtype: torch.dtype) -> str:
    """The name a `Bucket` stores, e.g. "bfloat16".

    >>> dtype_to_str(torch.bfloat16)
    'bfloat16'
    """
    return str(dtype).removeprefix("torch.")


def dtype_from_str(name: str) -> torch.dtype:
    """The torch dtype for a `Bucket.dtype` name; ValueError for anything else.

    >>> dtype_from_str("float32")
    torch.float32
    """
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype name {name!r}")
    return dtype


def plan_buckets(specs: Sequence[tuple[str, tuple[int, ...], torch.dtype]], bucket_bytes: int) -> SyncPlan:
    """Group (name, shape, dtype) specs into single-dtype buckets of at most `bucket_bytes` each.

    Input order is kept within each dtype; one bucket per dtype is open at a time, so a model whose fp32
    norms interleave with bf16 weights still gets few, full buckets. Buckets are ordered by their first
    tensor's input position. A tensor larger than `bucket_bytes` gets a bucket of its own.

    >>> plan = plan_buckets([("a", (2, 2), torch.float32), ("b", (3,), torch.float32)], bucket_bytes=16)
    >>> [[s.name for s in b.slots] for b in plan.buckets], plan.total_bytes
    ([['a'], ['b']], 28)
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    seen: set[str] = set()
    closed: list[tuple[int, Bucket]] = []  # (input position of first tensor, bucket)
    open_: dict[torch.dtype, tuple[int, list[TensorSlot], int]] = {}  # dtype -> (first position, slots, numel)
    for pos, (name, shape, dtype) in enumerate(specs):
        if name in seen:
            raise ValueError(f"duplicate tensor name {name!r} in weight-sync specs")
        seen.add(name)
        shape = tuple(int(d) for d in shape)
        numel = _numel(shape)
        first, slots, used = open_.get(dtype, (pos, [], 0))
        if slots and (used + numel) * dtype.itemsize > bucket_bytes:
            closed.append((first, _bucket(dtype, slots, used)))
            first, slots, used = pos, [], 0
        slots.append(TensorSlot(name=name, shape=shape, offset=used, numel=numel))
        open_[dtype] = (first, slots, used + numel)
    closed.extend((first, _bucket(dtype, slots, used)) for dtype, (first, slots, used) in open_.items())
    closed.sort(key=lambda item: item[0])
    return SyncPlan(buckets=tuple(b for _, b in closed))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        if d < 0:
            raise ValueError(f"negative dimension in shape {shape}")
        n *= d
    return n


def _bucket(dtype: torch.dtype, slots: list[TensorSlot], numel: int) -> Bucket:
    return Bucket(dtype=dtype_to_str(dtype), numel=numel, slots=tuple(slots))


def pack(bucket: Bucket, tensors: Mapping[str, Tensor], out: Tensor | None = None) -> Tensor:
    """Copy the bucket's tensors (looked up by name; extra entries are ignored) into one flat 1-D buffer.

    The buffer is on the tensors' device. Pass the previous step's result as `out` to reuse its memory.
    """
    dtype = bucket.torch_dtype
    for slot in bucket.slots:
        _check_tensor(slot, tensors, dtype)
    if out is None:
        device = tensors[bucket.slots[0].name].device if bucket.slots else torch.device("cpu")
        out = torch.empty(bucket.numel, dtype=dtype, device=device)
    elif out.dim() != 1 or out.numel() != bucket.numel or out.dtype != dtype:
        raise ValueError(f"out buffer must be 1-D {bucket.dtype} with {bucket.numel} elements, "
                         f"got shape {tuple(out.shape)} {dtype_to_str(out.dtype)}")
    with torch.no_grad():  # packing parameters must not record autograd history into the buffer
        for slot in bucket.slots:
            out[slot.offset:slot.offset + slot.numel].view(slot.shape).copy_(tensors[slot.name])
    return out


def pack_parts(bucket: Bucket, parts: Iterable[Mapping[str, Tensor]], out: Tensor) -> Tensor:
    """`pack` for tensors that come in parts (e.g. gathered part by part, each valid only until the next): each part
    is copied into `out` as it arrives; together the parts must cover every slot exactly once."""
    done: set[str] = set()
    for named in parts:
        part = bucket.subset(named)
        twice = done.intersection(s.name for s in part.slots)
        if twice:
            raise ValueError(f"tensors {sorted(twice)} came in two parts of one bucket")
        pack(part, named, out)
        done.update(s.name for s in part.slots)
    missing = [s.name for s in bucket.slots if s.name not in done]
    if missing:
        raise ValueError(f"tensors {missing} are in the sync plan but came in no part of their bucket")
    return out


def _check_tensor(slot: TensorSlot, tensors: Mapping[str, Tensor], dtype: torch.dtype) -> None:
    if slot.name not in tensors:
        raise ValueError(f"tensor {slot.name!r} is in the sync plan but missing from the tensors to pack")
    t = tensors[slot.name]
    if tuple(t.shape) != slot.shape:
        raise ValueError(f"tensor {slot.name!r} has shape {tuple(t.shape)}, the sync plan expects {slot.shape}")
    if t.dtype != dtype:
        raise ValueError(f"tensor {slot.name!r} has dtype {dtype_to_str(t.dtype)}, "
                         f"the sync plan expects {dtype_to_str(dtype)}")


def unpack(bucket: Bucket, flat: Tensor) -> list[tuple[str, Tensor]]:
    """(name, view) pairs into `flat`: no copies, so the caller must load them before reusing `flat`."""
    if flat.dim() != 1 or flat.numel() != bucket.numel or flat.dtype != bucket.torch_dtype:
        raise ValueError(f"flat buffer must be 1-D {bucket.dtype} with {bucket.numel} elements, "
                         f"got shape {tuple(flat.shape)} {dtype_to_str(flat.dtype)}")
    return [(s.name, flat[s.offset:s.offset + s.numel].view(s.shape)) for s in bucket.slots]


def state_checksum(named: Iterable[tuple[str, Tensor]]) -> str:
    """sha256 hex digest over (name, dtype, shape, raw bytes) of each tensor, in name order.

    Independent of iteration order and device; bit-exact (so -0.0 != 0.0 and NaN payloads count). Moves each
    tensor to CPU in turn, which is fine for a probe but not for a per-step hot path on a large model.
    """
    items = sorted(named, key=lambda item: item[0])
    h = hashlib.sha256()
    for i, (name, t) in enumerate(items):
        if i and items[i - 1][0] == name:
            raise ValueError(f"duplicate tensor name {name!r} in state_checksum input")
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\0{dtype_to_str(t.dtype)}\0{tuple(t.shape)}\0".encode())
        # A uint8 view gives the raw bytes of any dtype, including bfloat16 which numpy cannot represent.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def hf_param_name(name: str) -> str:
    """The plain HF name of a parameter seen through DeepSpeed/DDP ("module.") or torch.compile ("_orig_mod.").

    >>> hf_param_name("module._orig_mod.model.layers.0.mlp.up_proj.weight")
    'model.layers.0.mlp.up_proj.weight'
    >>> hf_param_name("lm_head.weight")
    'lm_head.weight'
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def sync_sources(raw_names: Sequence[str], tied_embeddings: bool) -> dict[str, tuple[str, ...]]:
    """Which raw state-dict entries each synced (HF-named) tensor is made of: its base entry first, then any LoRA
    pieces merged into it. Lets a learner plan and gather a sync bucket by bucket without the whole state.

    The names are those of `rlpt.models.lora.merged_state_dict` followed by `hf_param_name` (a test holds them
    equal): a peft piece `<path>.lora_A|B.<adapter>.weight` merges into `<path>.weight`, `base_model.model.` and
    `.base_layer.` go, wrapper prefixes go. With tied embeddings `lm_head.weight` is not synced (the engine re-ties
    it from the embeddings). Order: the base entries' order.

    >>> src = sync_sources(["base_model.model.q.base_layer.weight", "base_model.model.q.lora_A.default.weight",
    ...                     "base_model.model.q.lora_B.default.weight", "base_model.model.lm_head.weight"], True)
    >>> [(name, [raw.split(".")[-3] for raw in raws]) for name, raws in src.items()]
    [('q.weight', ['q', 'lora_A', 'lora_B'])]
    """
    bases: dict[str, str] = {}
    pieces: dict[str, list[str]] = {}
    for raw in raw_names:
        m = _LORA_PIECE.match(raw)
        if m:
            pieces.setdefault(hf_param_name(m["path"].removeprefix(_PEFT_PREFIX) + ".weight"), []).append(raw)
            continue
        name = hf_param_name(raw.removeprefix(_PEFT_PREFIX).replace(".base_layer.", "."))
        if name in bases:
            raise ValueError(f"{bases[name]!r} and {raw!r} both sync as {name!r}")
        bases[name] = raw
    orphans = sorted(set(pieces) - set(bases))
    if orphans:
        raise ValueError(f"LoRA pieces without a base weight: {orphans}")
    if tied_embeddings:
        bases.pop("lm_head.weight", None)
    return {name: (raw, *pieces.get(name, ())) for name, raw in bases.items()}
