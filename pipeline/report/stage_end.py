"""What a run does when a stage ends, besides its checkpoint: dev BLEU/chrF for every direction
with the stage-final weights, then the stage's report (test scored too) under reports/. The
worker registers it on the trainer on every rank: all ranks decode a share of dev and test, rank
0 scores and writes; the trainer and the checkpointer know nothing of evaluation or reports."""

from __future__ import annotations

from pipeline.config import RecipeConfig
from pipeline.data.prepare import PreparedCorpus
from pipeline.engine.collectives import Dist
from pipeline.evaluation.evaluate import format_table
from pipeline.evaluation.run_eval import evaluate_run
from pipeline.report.stage_report import write_stage_report
from pipeline.rundir.layout import RunDir


class StageEndReport:
    def __init__(self, run: RunDir, corpus: PreparedCorpus, recipe: RecipeConfig, dist: Dist) -> None:
        self.run, self.corpus, self.recipe, self.dist = run, corpus, recipe, dist

    def __call__(self, tag: str, stage_index: int) -> None:
        results = evaluate_run(self.run, self.corpus, self.recipe, split="dev", tag=tag, device=self.dist.device,
                               dist=self.dist)
        if self.corpus.splits.get("test"):  # the report scores it: decoded here by every rank, found there
            evaluate_run(self.run, self.corpus, self.recipe, split="test", tag=tag, device=self.dist.device,
                         dist=self.dist)
        if results is None:  # not rank 0
            return
        groups = {d.name: d.group for d in self.corpus.manifest.directions}
        print(format_table(results, groups), flush=True)
        try:
            path = write_stage_report(self.run, self.corpus, self.recipe, stage_index, tag, self.dist.device)
            print(f"report: {path} (and {path.parent / 'index.html'})", flush=True)
        except Exception as exc:  # a report is a view of the run: training goes on without it
            print(f"report: not written ({type(exc).__name__}: {exc}); `mmtc report {self.run.path}` retries",
                  flush=True)
