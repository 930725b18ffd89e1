"""What a rank holds, counted from its tensors (`Engine.held_bytes`): parameters, gradients,
optimizer state, the fp32 master copy and DeepSpeed's buffers, each storage once. Plain torch and
attribute walking: no DeepSpeed import."""

from __future__ import annotations

from typing import Any

import torch

HELD_KEYS = ("params", "fp32_master", "optimizer", "buckets", "grads", "other")  # the order storages are claimed in
_MASTER_ATTRS = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups_flat_partition")
_BUCKET_WORDS = ("ipg", "bucket")  # attribute paths of ZeRO's gradient-reduction buffers


def inner_torch_optimizer(opt: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16): the one holding Adam's state."""
    inner, hops = opt, 0
    while not isinstance(inner, torch.optim.Optimizer) and getattr(inner, "optimizer", None) not in (None, inner):
        inner, hops = inner.optimizer, hops + 1
        if hops > 8:
            break
    return inner if isinstance(inner, torch.optim.Optimizer) else None


def _leaf_grad(t: Any) -> torch.Tensor | None:
    """`t.grad` without torch's warning for non-leaf tensors (which hold none)."""
    return t.grad if isinstance(t, torch.Tensor) and t.is_leaf else None


def _deepspeed_tensors(root: Any, skip: set[int], depth: int = 6) -> list[tuple[str, torch.Tensor]]:
    """(attribute path, tensor) for every tensor reachable from `root` through DeepSpeed's own
    objects (the engine, a torch module, included), dicts, lists and tuples; not through other
    objects (the user's module, torch optimizers) nor the ids in `skip`."""
    out: list[tuple[str, torch.Tensor]] = []
    seen = set(skip)

    def walk(obj: Any, path: str, left: int) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            out.append((path, obj))
            return
        if left == 0 or isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
            return
        if isinstance(obj, dict):
            for k, v in list(obj.items()):
                walk(k, f"{path}[key]", left - 1)
                walk(v, f"{path}[{k if isinstance(k, (str, int)) else '.'}]", left - 1)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for i, v in enumerate(list(obj)):
                walk(v, f"{path}[{i}]", left - 1)
        elif type(obj).__module__.startswith("deepspeed") and hasattr(obj, "__dict__"):
            for k, v in list(vars(obj).items()):
                walk(v, f"{path}.{k}", left - 1)

    walk(root, "engine", depth)
    return out


class _HeldTally:
    """Bytes per key of the storages seen, each address range counted once, for the first key
    that claimed it (callers add keys in HELD_KEYS order)."""

    def __init__(self, device_type: str | None) -> None:
        self.device_type = device_type
        self.ranges: dict[str, list[tuple[int, int, str]]] = {}  # device -> (start, end, key)

    def add(self, key: str, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.is_meta or t.layout != torch.strided:
            return
        if self.device_type is not None and t.device.type != self.device_type:
            return
        storage = t.untyped_storage()
        start, n = storage.data_ptr(), storage.nbytes()
        if n > 0:
            self.ranges.setdefault(str(t.device), []).append((start, start + n, key))

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(HELD_KEYS, 0)
        for ranges in self.ranges.values():
            claimed: list[tuple[int, int]] = []  # disjoint, sorted by start
            for key in HELD_KEYS:
                mine = _union([(a, b) for a, b, k in ranges if k == key])
                out[key] += _length(mine) - _length(_intersect(mine, claimed))
                claimed = _union(claimed + mine)
        return out


def _union(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _intersect(x: list[tuple[int, int]], y: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, i, j = [], 0, 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


def _length(ranges: list[tuple[int, int]]) -> int:
    return sum(b - a for a, b in ranges)


def count_held(ds: Any, optimizer: Any, module: torch.nn.Module, device_type: str | None = None) -> dict[str, int]:
    """This rank's bytes of training state, counted from the tensors it holds right now (on a
    CPU the process's resident size mixes them with everything else, and hides allocations
    never touched). `device_type` ("cpu", "cuda") counts only tensors there; None all.

    A storage is counted once and whole (a flat buffer and all its views are one storage,
    padding included), under the first of these keys that reaches it (storages that alias
    the same addresses: their union), so no byte is counted twice:

    - params: the module's parameters: their storages (ZeRO-0: each tensor; ZeRO-1/2: the
      flat groups they view; ZeRO-3: the local partitions `ds_tensor`, views of one flat
      buffer, plus the full `data` gathered now: outside a forward or backward only that of
      the `ds_persist` parameters, those under `stage3_param_persistence_threshold`
      elements (1e5 by default), which stay whole on every rank after their first use).
      Not the module's buffers.
    - fp32_master: what the inner torch optimizer steps when it is not the module's own
      parameters (its param groups and state keys, and DeepSpeed's
      `single_partition_of_fp32_groups` (ZeRO-1/2), `fp32_partitioned_groups_flat` (ZeRO-3),
      `fp32_groups_flat_partition` (bf16)); 0 under ZeRO-0 in fp32.
    - optimizer: every tensor in the inner torch optimizer's `state`: Adam's exp_avg and
      exp_avg_sq and its `step` counts (a scalar per stepped tensor); none before the first step.
    - buckets: tensors DeepSpeed's objects hold under an attribute path naming buckets (`ipg`,
      `bucket`): gradient-reduction buffers sized by `reduce_bucket_size`, not by the model
      (ZeRO-3 allocates 5e8 elements at start-up; on a CPU they stay mostly untouched).
    - grads: the `.grad` (and DeepSpeed's `.grad_accum`) of the parameters, their partitions
      and the master tensors, and the tensors of DeepSpeed's objects under an attribute path
      naming gradients (`grad`, not `norm`): ZeRO-0's `p.grad`; ZeRO-1/2's
      `averaged_gradients` (views of the gradients of the parameters in the rank's
      partition, whole tensors, so a little over 1/N), `grads_in_partition`; ZeRO-3's
      `grad_partitions_flat_buffer` (which `__param_id_to_grad_partition` views), kept
      between steps, and with optimizer offload also the fp32 partition's `.grad` buffer.
    - other: every other tensor reachable from DeepSpeed's engine and optimizer objects.

    When matters. The trainer measures right after the backward that ends a step's gradient
    accumulation, before the optimizer step: the step's reduced gradients, the optimizer
    state of the steps before and the parameters are all there. By then DeepSpeed's ZeRO-1,
    like ZeRO-2, has reduced the gradients and dropped those of the parameters outside the
    rank's partition (they were whole during the backward, and stay whole between the
    micro-batches of an accumulation, where ZeRO-2 reduces each one). During the step
    ZeRO-1/2 swap the gradients for a flat fp32 copy of the partition's; after it ZeRO-0/1/2
    hold none, ZeRO-3 keeps its partition buffer."""
    wrapper: Any = optimizer
    inner = inner_torch_optimizer(wrapper)
    params = list(module.parameters())
    own = {id(p) for p in params}
    masters = [q for name in _MASTER_ATTRS for q in getattr(wrapper, name, None) or ()]
    if inner is not None:
        masters += [q for g in inner.param_groups for q in g["params"]]
        masters += [q for q in inner.state if isinstance(q, torch.Tensor)]
    masters = [q for q in masters if id(q) not in own]
    tally = _HeldTally(device_type)
    for p in params:
        for t in (p, getattr(p, "ds_tensor", None), getattr(p, "ds_secondary_tensor", None)):
            tally.add("params", t)
    for q in masters:
        tally.add("fp32_master", q)
    for state in ({} if inner is None else inner.state).values():
        for v in state.values():
            tally.add("optimizer", v)
    skip = {id(module), *own, *(() if inner is None else (id(inner),))}
    found = _deepspeed_tensors(ds, skip)
    for path, t in found:
        if any(w in path.lower() for w in _BUCKET_WORDS):
            tally.add("buckets", t)
    for t in (*params, *(getattr(p, "ds_tensor", None) for p in params), *masters):
        tally.add("grads", _leaf_grad(t))
    for p in params:
        tally.add("grads", getattr(p, "grad_accum", None))
    for path, t in found:
        named = path.lower()  # a gradient buffer, not a gradient norm
        tally.add("grads" if "grad" in named and "norm" not in named else "other", t)
        tally.add("grads", _leaf_grad(t))
    return tally.totals()
