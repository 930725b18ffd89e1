"""The one module that imports DeepSpeed: process-group setup, engine construction, checkpoint I/O.

About 300 lines because every DeepSpeed call of the package is here (gradient shards for surgery,
ZeRO consolidation, optimizer resets included): the rest of the package stays free of it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

# DeepSpeed picks its accelerator at import time; on a machine without CUDA it must be the CPU one.
if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
    os.environ["DS_ACCELERATOR"] = "cpu"

import deepspeed  # noqa: E402
import torch.distributed as dist  # noqa: E402
from deepspeed.utils import safe_get_local_grad, safe_set_full_fp32_param, safe_set_local_grad  # noqa: E402

from pipeline.config import PACKAGE_ROOT, RecipeConfig  # noqa: E402
from pipeline.core.hostinfo import usable_cores  # noqa: E402
from pipeline.engine.collectives import (  # noqa: E402
    Dist,
    all_reduce_sum,
    bound_every_group,
    collective_timeout,
    free_port,
    record_peers,
)
from pipeline.engine.held_bytes import count_held, inner_torch_optimizer  # noqa: E402
from pipeline.engine.lr_schedule import StepSchedule  # noqa: E402
from pipeline.engine.optim import SkippableAdamW  # noqa: E402

logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
deepspeed.utils.logger.setLevel(logging.WARNING)


def shm_buffer_path(rank: int) -> Path:
    """The shared-memory file DeepSpeed's CPU all-reduce creates for this rank (name from its shm.cpp)."""
    return Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
                               f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def release_shm_buffer(rank: int) -> None:
    """DeepSpeed never unlinks these 66 MB files: every multi-process CPU run left one per rank in
    /dev/shm (RAM) until the machine slowed down. Each rank maps every peer's buffer while
    initialising, so once all ranks are past that its name can go: the mappings stay valid and
    nothing is left behind, even after a kill -9."""
    dist.barrier()
    with contextlib.suppress(FileNotFoundError):
        shm_buffer_path(rank).unlink()


def setup_distributed(threads: int | None = None) -> Dist:
    """Join (or, alone, create) the process group. Ranks come from the launcher's environment;
    collective_timeout() bounds every collective's wait for a peer."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(threads or max(1, usable_cores() // max(1, local_world)))
    if not dist.is_initialized():
        timeout = collective_timeout()
        bound_every_group(timeout)
        if world == 1:
            # Alone, the process group needs no rendezvous: an in-process store, not a TCPStore on a
            # free port (whose self-connection hung once in a few hundred single-process test runs,
            # in _create_c10d_store). DeepSpeed then finds the group initialised and adopts it.
            dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False, timeout=timeout)
        if not cuda and world > 1:
            release_shm_buffer(rank)
        record_peers()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(rank, world, local_rank, device)


def ds_config(recipe: RecipeConfig, world: int) -> dict[str, Any]:
    """The DeepSpeed JSON from ds_configs/, merged with what the recipe decides."""
    name = recipe.deepspeed.config
    path = Path(name) if name.endswith(".json") else PACKAGE_ROOT / "ds_configs" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"deepspeed.config: {path} not found (names: zero0..zero3, zero3_offload)")
    cfg: dict[str, Any] = json.loads(path.read_text())
    t = recipe.train
    cfg.update(
        # Batches are token budgets, not sample counts: DeepSpeed only needs a consistent triple.
        train_micro_batch_size_per_gpu=1,
        gradient_accumulation_steps=t.grad_accum,
        train_batch_size=t.grad_accum * world,
        gradient_clipping=t.clip_norm,
    )
    # Our AdamW subclass (which can skip a step) is torch's AdamW to ZeRO, but not by type.
    cfg["zero_allow_untested_optimizer"] = True
    if offloads_optimizer(cfg):
        # ZeRO-Offload steps on the CPU with DeepSpeedCPUAdam, which DeepSpeed builds itself.
        cfg["optimizer"] = {"type": "AdamW", "params": {
            "lr": t.lr, "betas": list(t.adam_betas), "eps": t.adam_eps, "weight_decay": t.weight_decay}}
    if t.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif t.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 16}
    elif t.precision == "amp_bf16":
        cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    _merge(cfg, recipe.deepspeed.overrides)
    return cfg


def offloads_optimizer(cfg: dict[str, Any]) -> bool:
    return bool(cfg.get("zero_optimization", {}).get("offload_optimizer"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


class Engine:
    """A DeepSpeed engine around the model, with the LR schedule as a pure function of the step."""

    def __init__(self, model: torch.nn.Module, recipe: RecipeConfig, dist_info: Dist, total_steps: int) -> None:
        self.dist = dist_info
        self.config = ds_config(recipe, dist_info.world)
        self.zero_stage = int(self.config.get("zero_optimization", {}).get("stage", 0))
        model.to(dist_info.device)
        params = [p for p in model.parameters() if p.requires_grad]
        t = recipe.train
        self.client_optimizer: SkippableAdamW | None = None
        if not offloads_optimizer(self.config):
            self.client_optimizer = SkippableAdamW(
                params, check_grads=self.zero_stage == 0 and t.precision == "fp32", lr=t.lr,
                betas=tuple(t.adam_betas), eps=t.adam_eps, weight_decay=t.weight_decay,
                # One kernel per parameter: on a 2-core CPU the tiny model's step takes 4 ms, not 18.
                fused=dist_info.device.type in ("cpu", "cuda"),
            )
        self.ds, self.optimizer, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=params,
            optimizer=self.client_optimizer,
            config=self.config,
            lr_scheduler=lambda opt: StepSchedule(opt, recipe.train, total_steps),
        )
        self.schedule: StepSchedule = self.ds.lr_scheduler

    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    def __call__(self, *args: Any) -> Any:
        return self.ds(*args)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def set_boundary(self, last_micro_batch: bool) -> None:
        """Say whether the coming forward/backward ends the step's gradient accumulation. The
        trainer owns this (rather than DeepSpeed's micro-step counter) because a surgery step
        runs a task's micro-batches once per task and then steps once."""
        self.ds.set_gradient_accumulation_boundary(last_micro_batch)

    def step(self) -> None:
        opt = self.client_optimizer
        if opt is not None:
            opt.last_skipped = False
        self.ds.step()
        if opt is not None:
            # DeepSpeed's ZeRO/bf16 wrappers may skip the step before reaching this optimizer
            # (a non-finite gradient norm): the request must not carry over to the next step.
            opt.skip_next = False

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def skip_next_step(self) -> None:
        """Make the coming optimizer step a no-op on this rank (all ranks must call it together)."""
        if self.client_optimizer is None:
            raise RuntimeError("skipping a step needs the client optimizer (not available with optimizer offload)")
        self.client_optimizer.skip_next = True

    def last_step_applied(self) -> bool:
        skipped = self.client_optimizer is not None and self.client_optimizer.last_skipped
        return bool(self.ds.was_step_applied()) and not skipped

    def reset_optimizer_state(self) -> None:
        """Fresh Adam moments and step counts (a stage with `optimizer: reset`)."""
        inner = inner_torch_optimizer(self.optimizer)
        if inner is None:
            raise RuntimeError(f"cannot find the torch optimizer inside {type(self.optimizer).__name__}")
        inner.state.clear()

    # -- this rank's shard of the reduced gradient (gradient surgery, diagnostics) ------------------
    # After a backward at a gradient-accumulation boundary DeepSpeed has averaged the gradient over
    # ranks. ZeRO-0 leaves it whole on every rank (we take the rank's slice of it, so shards are
    # disjoint); ZeRO-1/2 keep each rank's fragment of each parameter (`_hp_mapping`); ZeRO-3
    # exposes its local partition through `safe_get_local_grad`. Summing shard-wise dot products
    # over ranks gives the dot products of the full averaged gradients.
    def _fragment(self, p: torch.nn.Parameter) -> torch.Tensor | None:
        if self.zero_stage == 3:
            return safe_get_local_grad(p)
        if self.zero_stage == 0:
            return p.grad
        hp = getattr(p, "_hp_mapping", None)
        return None if hp is None else hp.get_lp_grad_fragment(p._index_in_param_group)

    def _zero0_bounds(self, n: int) -> tuple[int, int]:
        w, r = self.dist.world, self.dist.rank
        return r * n // w, (r + 1) * n // w

    def shard_layout(self) -> list[tuple[str, int]]:
        """(parameter name, length of this rank's shard of it), in shard order."""
        out = []
        for name, p in self.module.named_parameters():
            f = self._fragment(p)
            out.append((name, 0 if f is None else f.numel()))
        if self.zero_stage == 0:  # the rank's slice of the concatenation
            total = sum(n for _, n in out)
            lo, hi = self._zero0_bounds(total)
            clipped, pos = [], 0
            for name, n in out:
                a, b = max(pos, lo), min(pos + n, hi)
                clipped.append((name, max(0, b - a)))
                pos += n
            out = clipped
        return out

    def local_grad_shard(self) -> torch.Tensor:
        """A float32 copy of this rank's shard of the current (reduced) gradient."""
        parts = []
        for p in self.module.parameters():
            f = self._fragment(p)
            if f is not None:
                parts.append(f.detach().float().reshape(-1))
        flat = torch.cat(parts) if parts else torch.zeros(0)
        if self.zero_stage == 0:
            lo, hi = self._zero0_bounds(flat.numel())
            return flat[lo:hi].clone()
        return flat.clone()

    def set_local_grad_shard(self, shard: torch.Tensor) -> None:
        """Write this rank's shard of the gradient the optimizer will apply (under ZeRO-0, where
        every rank applies the whole gradient, the ranks' slices are first summed into it)."""
        src, offset = shard, 0
        if self.zero_stage == 0:
            total = sum(p.grad.numel() for p in self.module.parameters() if p.grad is not None)
            lo, hi = self._zero0_bounds(total)
            src = torch.zeros(total, dtype=torch.float32, device=shard.device)
            src[lo:hi] = shard
            all_reduce_sum(src)
        for p in self.module.parameters():
            f = self._fragment(p)
            if f is None:
                continue
            piece = src[offset : offset + f.numel()].to(f.dtype).view_as(f)
            if self.zero_stage == 3:
                safe_set_local_grad(p, piece)
            else:
                f.data.copy_(piece)
            offset += f.numel()

    def clear_grads(self) -> None:
        """Drop the current gradient (between the backward passes of two tasks)."""
        if self.zero_stage == 0:
            self.ds.zero_grad()
        else:
            self.optimizer.zero_grad()

    def grad_norm(self) -> float | None:
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, root: Path, tag: str, client_state: dict[str, Any]) -> None:
        self.ds.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)

    def load(self, root: Path, tag: str) -> dict[str, Any]:
        path, client_state = self.ds.load_checkpoint(
            str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")
        return client_state or {}

    def load_weights_only(self, tag_dir: Path, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Resume on another world size without the optimizer state (where `load_universal`
        cannot): take the float32 `weights` (weights.consolidated_state of the tag) and the tag's
        LR schedule, keep the optimizer's fresh state, and return the checkpoint's client state."""
        for name, p in self.module.named_parameters():
            value = weights[name].to(self.dist.device)
            if self.zero_stage == 0 and not hasattr(p, "_hp_mapping"):
                with torch.no_grad():
                    p.copy_(value.to(p.dtype))
            else:  # the optimizer's fp32 master copy and the module's working copy
                safe_set_full_fp32_param(p, value)
        # ZeRO-3 names its model-state files by rank (every one holds the client state).
        files = [tag_dir / "mp_rank_00_model_states.pt", tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt"]
        saved = torch.load(next((f for f in files if f.is_file()), files[0]), map_location="cpu", weights_only=False)
        if saved.get("lr_scheduler") is not None:
            self.schedule.load_state_dict(saved["lr_scheduler"])
        return saved

    # -- resuming on another world size with the optimizer state (DeepSpeed's universal checkpoints) --
    def universal_unsupported(self) -> str | None:
        """Why this engine cannot take Adam's moments from a universal checkpoint (None: it can).
        A ZeRO-0 checkpoint needs none (nothing is sharded: its mp_rank_00_model_states.pt holds the
        whole optimizer state, and `load` takes it on any world size); the ZeRO-0 answer is for a
        ZeRO-1/2/3 checkpoint resumed by a ZeRO-0 run (an allowed recipe change)."""
        if self.zero_stage == 0:
            return "this run is ZeRO-0, which takes no ZeRO shards (its own checkpoints hold the whole optimizer state)"
        off = self.config.get("zero_optimization", {}).get("offload_optimizer") or {}
        if off.get("device") == "nvme":
            # load_checkpoint skips ZeRO's optimizer load under NVMe offload and copies each
            # rank's swap files back instead: files of the old world's partitions.
            return "optimizer offload to NVMe: DeepSpeed restores its swap files per rank, never from a universal one"
        return None

    def load_universal(self, universal_dir: Path) -> dict[str, Any]:
        """Load `to_universal`'s folder: the fp32 master weights, Adam's moments and step counts,
        re-split for this world size, and the LR schedule; returns the checkpoint's client state.

        DeepSpeed takes `checkpoint.load_universal` from the config, but reads it only while
        loading (engine.load_universal_checkpoint() returns `_config.load_universal_checkpoint`
        at call time; initialize and the ZeRO optimizers never read it: ZeRO-1/2 and the bf16
        optimizer give every parameter its `load_hp_checkpoint_state` unconditionally). So the flag
        is set for this one load and put back, rather than building a second engine for a resume:
        later loads of ordinary tags still need it off."""
        cfg = self.ds._config
        before = cfg.load_universal_checkpoint
        cfg.load_universal_checkpoint = True
        try:
            path, client_state = self.ds.load_checkpoint(
                str(universal_dir.parent), tag=universal_dir.name, load_optimizer_states=True,
                load_lr_scheduler_states=True)
        finally:
            cfg.load_universal_checkpoint = before
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the universal checkpoint {universal_dir}")
        # The step counts come back as the tensors the old ranks saved, wherever they lived; torch's
        # fused Adam wants each on its parameter's device (as Optimizer.load_state_dict would put it).
        inner = inner_torch_optimizer(self.optimizer)
        for p, state in ({} if inner is None else inner.state).items():
            step = state.get("step")
            if isinstance(step, torch.Tensor) and isinstance(p, torch.Tensor) and step.device != p.device:
                state["step"] = step.to(p.device)
        return client_state or {}

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every parameter in float32 on rank 0 (None elsewhere); a collective under ZeRO-3."""
        params = list(self.module.parameters())
        if self.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                state = self._cpu_state() if self.dist.is_main else None
            return state
        return self._cpu_state() if self.dist.is_main else None

    def snapshot_weights(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """A copy of every parameter on every rank (LSSD's teachers), in `dtype` on `device`; under
        ZeRO-3 the partitions are gathered for the copy (a collective: all ranks call it together)."""
        params = list(self.module.parameters())
        ctx = (deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.zero_stage == 3
               else contextlib.nullcontext())
        with ctx, torch.no_grad():
            return {k: v.detach().to(device=device, dtype=dtype, copy=True)
                    for k, v in self.module.named_parameters()}

    def _cpu_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().clone() for k, v in self.module.state_dict().items()}

    # -- what this rank holds (the ZeRO memory benchmark, the metrics rows) -------------------------
    def held_bytes(self, device_type: str | None = None) -> dict[str, int]:
        """This rank's bytes of training state by kind (pipeline/engine/held_bytes.py says what
        each key counts, and when the trainer measures)."""
        return count_held(self.ds, self.optimizer, self.module, device_type)
