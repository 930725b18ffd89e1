"""The training loop: stages of steps over a DeepSpeed engine, read top to bottom.

Each step draws this rank's micro-batches from the stage's batch stream, computes the per-token
loss, sums it per direction (scatter-add), normalises by the step's global target-token count and
lets DeepSpeed reduce and apply the gradients. The trainer does not know which sampler it runs.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .config import RecipeConfig, StageConfig
from .data.batches import BatchStream, StepBatches
from .data.prepare import PreparedCorpus
from .engine import Dist, Engine, all_reduce_sum, barrier
from .model import Seq2SeqTransformer, resolve_arch
from .rundir import RunDir
from .sampling import build_sampler
from .typed_yaml import to_plain


@dataclass
class Counters:
    step: int = 0  # optimizer steps done in the whole run
    stage: int = 0  # index of the current stage
    stage_step: int = 0  # optimizer steps done in the current stage
    tokens: int = 0  # target tokens trained on, all ranks
    finished: bool = False


def build_model(recipe: RecipeConfig, vocab_size: int, pad_id: int) -> Seq2SeqTransformer:
    return Seq2SeqTransformer(resolve_arch(recipe.model), vocab_size, pad_id)


class Trainer:
    def __init__(self, recipe: RecipeConfig, run: RunDir, dist: Dist, corpus: PreparedCorpus) -> None:
        self.recipe, self.run, self.dist, self.corpus = recipe, run, dist, corpus
        self.names = corpus.manifest.names
        self.stages = recipe.resolved_stages()
        torch.manual_seed(recipe.seed + 1000 * dist.rank)
        model = build_model(recipe, corpus.tokenizer.vocab_size, corpus.tokenizer.pad_id)
        self.engine = Engine(model, recipe, dist, recipe.train.max_steps)
        self.counters = Counters()
        self.stream: BatchStream | None = None
        self._acc = torch.zeros(3, len(self.names), dtype=torch.float64)
        self._t_log = time.time()
        self._bar: Any = None

    # -- building blocks ---------------------------------------------------------------------
    def stage_directions(self, stage: StageConfig) -> list[str]:
        return self.corpus.manifest.select(stage.directions)

    def make_stream(self, index: int) -> BatchStream:
        stage = self.stages[index]
        names = self.stage_directions(stage)
        sampler = build_sampler(self.recipe.stage_sampling(stage), names, self.corpus.sizes(names))
        specs = {d.name: d for d in self.corpus.manifest.directions}
        t = self.recipe.train
        return BatchStream(
            [self.corpus.splits["train"][n] for n in names],
            [self.names.index(n) for n in names],
            [self.corpus.tokenizer.tag_id(specs[n].tgt) for n in names],
            sampler,
            seed=self.recipe.seed, stage=index, max_tokens=t.max_tokens, chunk_steps=t.chunk_steps,
            world=self.dist.world, rank=self.dist.rank, accum=t.grad_accum,
        )

    def stage_limit(self, index: int) -> int:
        """The global step at which stage `index` ends at the latest."""
        stage = self.stages[index]
        start = self.counters.step - self.counters.stage_step
        end = start + stage.max_steps if stage.max_steps else self.recipe.train.max_steps
        return min(end, self.recipe.train.max_steps)

    def train_step(self, sb: StepBatches) -> None:
        dev = self.dist.device
        scale = self.dist.world * self.recipe.train.grad_accum / max(1, sb.global_tgt_tokens)
        for mb in sb.micro:
            tgt_out = mb.tgt_out.to(dev)
            loss_tok, nll_tok = self.engine(mb.src.to(dev), mb.tgt_in.to(dev), tgt_out)
            seq_loss = loss_tok.sum(1)
            self.engine.backward(seq_loss.sum() * scale)
            self.engine.step()
            d = mb.direction
            with torch.no_grad():
                self._acc[0].index_add_(0, d, seq_loss.detach().double().cpu())
                self._acc[1].index_add_(0, d, nll_tok.sum(1).detach().double().cpu())
                self._acc[2].index_add_(0, d, (tgt_out != 0).sum(1).double().cpu())
        self.counters.step += 1
        self.counters.stage_step += 1
        self.counters.tokens += sb.global_tgt_tokens

    # -- logging -----------------------------------------------------------------------------
    def log(self, stage: StageConfig) -> None:
        acc = all_reduce_sum(self._acc.clone())
        self._acc.zero_()
        now = time.time()
        elapsed, self._t_log = now - self._t_log, now
        if not self.dist.is_main:
            return
        tokens = acc[2]
        tot = float(tokens.sum())
        assert self.stream is not None and self.stream.p is not None
        p = dict(zip([self.names[i] for i in self.stream.dir_ids], [round(float(x), 6) for x in self.stream.p]))
        record = {
            "step": self.counters.step,
            "stage": stage.name,
            "lr": self.engine.lr(),
            "loss": float(acc[0].sum()) / max(1.0, tot),
            "nll": float(acc[1].sum()) / max(1.0, tot),
            "grad_norm": self.engine.grad_norm(),
            "tokens_per_s": tot / max(elapsed, 1e-9),
            "tokens": self.counters.tokens,
            "directions": {
                n: {"loss": float(acc[0, i] / tokens[i]), "nll": float(acc[1, i] / tokens[i]), "tokens": int(tokens[i])}
                for i, n in enumerate(self.names) if tokens[i] > 0
            },
            "p": p,
        }
        self.run.append(self.run.metrics, record)
        self._progress(record)

    def _progress(self, r: dict[str, Any]) -> None:
        total = self.recipe.train.max_steps
        if sys.stderr.isatty():
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total, initial=r["step"], unit="step", dynamic_ncols=True)
            self._bar.n = r["step"]
            self._bar.set_postfix_str(f"{r['stage']} loss {r['loss']:.3f} {r['tokens_per_s']:.0f} tok/s")
            return
        left = (total - r["step"]) * self.recipe.train.max_tokens / max(r["tokens_per_s"], 1e-9)
        print(f"step {r['step']}/{total} [{r['stage']}] loss {r['loss']:.3f} nll {r['nll']:.3f} "
              f"lr {r['lr']:.2e} {r['tokens_per_s']:.0f} tok/s", f"eta~{left / 60:.1f}min", flush=True)

    # -- checkpoints -------------------------------------------------------------------------
    def client_state(self) -> dict[str, Any]:
        return {
            "counters": asdict(self.counters),
            "stream": None if self.stream is None else self.stream.state_dict(),
            "world": self.dist.world,
            "corpus": self.corpus.fingerprint,
            "recipe": to_plain(self.recipe),
        }

    def save(self, final: bool, stage_index: int | None = None) -> ckpt.Committed | None:
        index = self.counters.stage if stage_index is None else stage_index
        stage = self.stages[index]
        tag = ckpt.tag_for(self.counters.step, stage.name, final)
        root = self.run.checkpoints
        self.engine.save(root, tag, self.client_state())
        torch.save(torch.get_rng_state(), root / tag / f"rng_rank{self.dist.rank}.pt")
        state = self.engine.full_state_dict() if final else None
        if state is not None:
            torch.save(state, root / tag / "consolidated.pt")
        barrier()
        committed = None
        if self.dist.is_main:
            meta = {"step": self.counters.step, "stage": stage.name, "stage_index": index,
                    "final": final, "world": self.dist.world, "zero_stage": self.engine.zero_stage}
            committed = ckpt.commit(root, tag, meta)
            ckpt.prune(root, self.recipe.train.keep_last)
        barrier()
        return committed

    def restore(self) -> ckpt.Committed | None:
        found, notes = ckpt.discover(self.run.checkpoints)
        if self.dist.is_main:
            for n in notes:
                print(f"resume: {n}", flush=True)
        if found is None:
            return None
        cs = self.engine.load(self.run.checkpoints, found.tag)
        self.counters = Counters(**cs["counters"])
        rng = found.path / f"rng_rank{self.dist.rank}.pt"
        if rng.is_file():
            torch.set_rng_state(torch.load(rng))
        if not self.counters.finished and cs.get("stream") is not None:
            self.stream = self.make_stream(self.counters.stage)
            self.stream.load_state_dict(cs["stream"])
        if self.dist.is_main:
            self._truncate_logs(self.counters.step)
            print(f"resume: from {found.tag} (step {self.counters.step})", flush=True)
        return found

    def _truncate_logs(self, step: int) -> None:
        """Drop what a killed run logged after its last checkpoint; the resumed run logs it again."""
        for path in (self.run.metrics, self.run.events):
            rows = self.run.read_jsonl(path)
            kept = [r for r in rows if r.get("step", 0) <= step]
            if len(kept) != len(rows):
                ckpt.atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> None:
        t = self.recipe.train
        while not self.counters.finished:
            index = self.counters.stage
            stage = self.stages[index]
            if self.stream is None:
                self.stream = self.make_stream(index)
                if self.dist.is_main:
                    self.run.append(self.run.events, {"step": self.counters.step, "event": "stage_start",
                                                      "stage": stage.name, "directions": self.stream_names()})
            limit = self.stage_limit(index)
            self.engine.train()
            while self.counters.step < limit:
                self.train_step(self.stream.step_batches(self.counters.stage_step))
                if self.counters.step % t.log_every == 0 or self.counters.step == limit:
                    self.log(stage)
                if t.save_every and self.counters.step % t.save_every == 0 and self.counters.step < limit:
                    self.save(final=False)
            self.end_stage(index, "max_steps")

    def stream_names(self) -> list[str]:
        assert self.stream is not None
        return [self.names[i] for i in self.stream.dir_ids]

    def end_stage(self, index: int, reason: str) -> None:
        if self.dist.is_main:
            self.run.append(self.run.events, {"step": self.counters.step, "event": "stage_end",
                                              "stage": self.stages[index].name, "reason": reason})
        last = index + 1 >= len(self.stages) or self.counters.step >= self.recipe.train.max_steps
        if last:
            self.counters.finished = True
            self.stream = None
        else:
            # The stage-final checkpoint belongs to the stage that ended; the counters already
            # point at the next one so that a resume from it starts there.
            self.counters.stage, self.counters.stage_step = index + 1, 0
            self.stream = None
        self._save_stage_final(index)
        if self._bar is not None and self.counters.finished:
            self._bar.close()

    def _save_stage_final(self, index: int) -> None:
        committed = self.save(final=True, stage_index=index)
        if committed is not None:
            print(f"checkpoint: {committed.path}", flush=True)


def final_checkpoint(run: RunDir) -> Path:
    found, notes = ckpt.discover(run.checkpoints)
    if found is None:
        raise FileNotFoundError(f"{run.checkpoints}: no committed checkpoint ({'; '.join(notes) or 'none saved'})")
    return found.path
