"""DoReMi's domain weights (Xie et al. 2023, "DoReMi: Optimizing Data Mixtures Speeds Up Language
Model Pretraining"; reference code sangmichaelxie/doremi, trainer.py), over directions.

A small proxy model trains against a frozen reference model (an earlier run trained on the
reference mixture). After every step, each direction's score is its per-token excess loss
clipped at 0, averaged over its tokens in the step:
    λ_i = mean over direction i's target tokens of max(ℓ_proxy(t) − ℓ_ref(t), 0);
a direction absent from the step keeps its previous score. The weights then take one
exponentiated-gradient step and are smoothed toward uniform, and the smoothed weights are fed back:
    α ← (1 − c)·softmax(log α + η·λ) + c/k,      η = 1, c = 1e-3 (run_pile_doremi120M.sh)
The proxy trains on the α-weighted loss (`apply: token_weight`: each token weighted by α_i over
its direction's batch share, normalised over the step's tokens, as the reference's compute_loss).
The output is the average of α over training, initial weights included, which then trains the
main model as static weights (`mmtc doremi`).
Where we differ: α starts uniform (the reference starts at its reference weights, uniform in the
paper's runs); scores start at 0, not log V (only matters for a direction absent from every step
before its first appearance); the per-token loss is the NLL of the target token (the reference's
causal-LM loss has no label smoothing either).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.balance.base import Sampler, register


@dataclass
class DoremiParams:
    reference_run: str = ""  # run directory of the reference model (its latest committed checkpoint)
    reference_checkpoint: str | None = None  # a tag in it instead of the latest
    eta: float = 1.0  # --reweight_eta
    smoothing: float = 1e-3  # c: --reweight_eps of the paper's script

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [] if self.reference_run else [(f"{path}.reference_run", "DoReMi needs a reference run directory")]
        if self.eta <= 0:
            out.append((f"{path}.eta", "must be > 0"))
        if not 0 <= self.smoothing < 1:
            out.append((f"{path}.smoothing", "must be in [0, 1)"))
        return out


class Doremi(Sampler):
    kind = "doremi"
    dynamic = True
    wants_reference = True  # the trainer scores every step's targets with the reference model
    requires_apply = "token_weight"

    def __init__(self, names: Any, sizes: Any, params: DoremiParams) -> None:
        super().__init__(names, sizes)
        self.params = params
        k = len(self.names)
        self.alpha = np.full(k, 1.0 / k)
        self.score = np.zeros(k)
        self.average = self.alpha.copy()
        self.updates = 1  # the reference's update_counter: the average includes the initial weights

    def probabilities(self, step: int) -> np.ndarray:
        return self.alpha

    def observe_excess(self, step: int, excess: np.ndarray, tokens: np.ndarray) -> None:
        """`excess`: summed clipped per-token excess loss per direction in the step; `tokens`: the
        target tokens it summed over."""
        seen = tokens > 0
        self.score[seen] = excess[seen] / tokens[seen]
        log_new = np.log(self.alpha) + self.params.eta * self.score
        log_new -= np.logaddexp.reduce(log_new)
        c = self.params.smoothing
        self.alpha = (1 - c) * np.exp(log_new) + c / len(self.alpha)
        self.updates += 1
        self.average = (self.average * (self.updates - 1) + self.alpha) / self.updates

    def log_values(self) -> dict[str, Any]:
        return {"average": {n: round(float(x), 6) for n, x in zip(self.names, self.average)},
                "score": {n: round(float(x), 5) for n, x in zip(self.names, self.score)}}

    def _state(self) -> dict[str, Any]:
        return {"alpha": self.alpha.tolist(), "score": self.score.tolist(), "average": self.average.tolist(),
                "updates": self.updates}

    def _load(self, state: dict[str, Any]) -> None:
        self.alpha = np.array(state["alpha"], dtype=np.float64)
        self.score = np.array(state["score"], dtype=np.float64)
        self.average = np.array(state["average"], dtype=np.float64)
        self.updates = int(state["updates"])


register("doremi", DoremiParams, Doremi)
