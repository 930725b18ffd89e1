"""Weights learned from gradients: MultiDDS-S (Wang et al. 2020) and `curvature_aware`, our own.

Both refresh every `every` steps from one train batch and one dev batch per direction (see
`pipeline/gradients/probe.py`), which the trainer computes when `needs_gradients` is set.

MultiDDS-S: reward r_i = mean over dev directions j of cos(∇L_train_i, ∇L_dev_j); a scorer with
one logit per direction (p = softmax) takes `steps` Adam steps on −Σ r_i log p_i at each update
(cindyxinyiwang/multiDDS, multidds_s.sh: --data-actor-lr 1e-4 --data-actor-optim-step 200
--update-language-sampling 1000 --utility-type ave). The scorer starts at the proportional
distribution (logits = log sizes: the reference pretrains its scorer to the data-size prior with
--datasize-t 1). Scorer and Adam state are checkpointed.

`curvature_aware` is NOT CATS (Li & Gong 2021, "curvature aware task scaling"): that paper
rescales task gradients by a meta-objective whose equations we could not read, so its
algorithm is not implemented here. This policy is our own second-order model, applied as
sampling weights, inspired by the paper's aim (low curvature, uniformly low loss): weights α on the simplex with
α ≥ ε minimise the second-order prediction of the mean dev loss after a unit step along the
weighted sum of unit train gradients v_i:
    Q(α) = −Σ_i α_i a_i + (λ/2) Σ_ij α_i α_j K_ij,
a_i = v_i·ḡ_dev (ḡ_dev the gradient of the mean dev loss) and K_ij = v_iᵀ H_dev v_j, the
curvature of the dev loss along the task directions, from exact Hessian-vector products of the
dev loss (double backpropagation): no Hessian is formed. Each product costs about two
forward-backward passes over the curvature batch, so K is estimated on `curvature_tokens` dev
tokens in all (an equal share per direction), not a probe batch per direction: with T directions
that is T times cheaper. K is then an average over fewer tokens (still an unbiased estimate of the
dev Hessian's quadratic form, noisier), and `rate` smooths α across updates.
Why this estimator: it measures curvature where the update actually moves (along the task
gradients) and on held-out data (which is what overfitting low-resource directions sharpen), and
it needs no random probes (Hutchinson) or finite-difference step size.
Q is minimised by projected gradient steps from the current α, then α moves toward the
minimiser by `rate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.balance.base import GradientAlignment, Sampler, register


@dataclass
class MultiDdsParams:
    lr: float = 1e-4  # scorer Adam learning rate (multidds_s.sh: --data-actor-lr 0.0001)
    steps: int = 200  # Adam steps per update (multidds_s.sh: --data-actor-optim-step 200)
    probe_tokens: int = 2000  # tokens per probe batch

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [] if self.lr > 0 else [(f"{path}.lr", "must be > 0")]
        if self.steps < 1:
            out.append((f"{path}.steps", "must be >= 1"))
        return out


class MultiDds(Sampler):
    kind = "multidds"
    dynamic = True
    needs_gradients = True

    def __init__(self, names: Any, sizes: Any, params: MultiDdsParams) -> None:
        super().__init__(names, sizes)
        self.params = params
        self.probe_tokens = params.probe_tokens
        self.logits = torch.nn.Parameter(torch.log(torch.tensor(self.data_p, dtype=torch.float64)))
        self.opt = torch.optim.Adam([self.logits], lr=params.lr)
        self.last_reward = np.zeros(len(self.names))

    def probabilities(self, step: int) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.logits, 0).numpy()

    def observe_alignment(self, step: int, info: GradientAlignment) -> None:
        reward = info.cos.mean(axis=1)
        self.last_reward = reward
        r = torch.tensor(reward, dtype=torch.float64)
        for _ in range(self.params.steps):
            self.opt.zero_grad()
            loss = -(r * torch.log_softmax(self.logits, 0)).sum()
            loss.backward()
            self.opt.step()

    def log_values(self) -> dict[str, Any]:
        return {"reward": {n: round(float(x), 5) for n, x in zip(self.names, self.last_reward)}}

    def _state(self) -> dict[str, Any]:
        return {"logits": self.logits.detach().tolist(), "opt": self.opt.state_dict(),
                "reward": self.last_reward.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(torch.tensor(state["logits"], dtype=torch.float64))
        self.opt.load_state_dict(state["opt"])
        self.last_reward = np.array(state["reward"])


@dataclass
class CurvatureAwareParams:
    epsilon: float = 1e-3  # floor on every weight
    curvature_weight: float = 1.0  # λ
    rate: float = 0.5  # how far α moves toward the minimiser per update
    solver_steps: int = 200
    probe_tokens: int = 2000  # tokens per train and dev gradient, one batch each per direction
    curvature_tokens: int = 1000  # dev tokens in all (an equal share per direction) for K's Hessian

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [] if 0 < self.epsilon < 1 else [(f"{path}.epsilon", "must be in (0, 1)")]
        if not 0 < self.rate <= 1:
            out.append((f"{path}.rate", "must be in (0, 1]"))
        for name in ("probe_tokens", "curvature_tokens"):
            if getattr(self, name) < 1:
                out.append((f"{path}.{name}", "must be >= 1"))
        return out


def project_floor_simplex(x: np.ndarray, eps: float) -> np.ndarray:
    """Euclidean projection onto {α : α_i >= eps, Σ α = 1}."""
    n = len(x)
    if n * eps >= 1:
        return np.full(n, 1.0 / n)
    y = (x - eps) / (1 - n * eps)
    u = np.sort(y)[::-1]
    css = np.cumsum(u)
    k = np.nonzero(u * np.arange(1, n + 1) > (css - 1))[0][-1]
    theta = (css[k] - 1) / (k + 1)
    return eps + (1 - n * eps) * np.maximum(y - theta, 0.0)


def curvature_minimiser(a: np.ndarray, k: np.ndarray, lam: float, eps: float, start: np.ndarray, steps: int) -> np.ndarray:
    """argmin over the floored simplex of −aᵀα + (λ/2) αᵀKα, by projected gradient descent."""
    k = 0.5 * (k + k.T)
    lipschitz = max(1e-8, lam * float(np.abs(np.linalg.eigvalsh(k)).max()))
    alpha = project_floor_simplex(start, eps)
    step = 1.0 / lipschitz if lam > 0 else 1.0
    for _ in range(steps):
        alpha = project_floor_simplex(alpha - step * (-a + lam * k @ alpha), eps)
    return alpha


class CurvatureAware(Sampler):
    kind = "curvature_aware"
    dynamic = True
    needs_gradients = True
    wants_curvature = True

    def __init__(self, names: Any, sizes: Any, params: CurvatureAwareParams) -> None:
        super().__init__(names, sizes)
        self.params = params
        self.probe_tokens, self.curvature_tokens = params.probe_tokens, params.curvature_tokens
        self.alpha = project_floor_simplex(self.data_p.copy(), params.epsilon)
        self.last: dict[str, Any] = {}

    def probabilities(self, step: int) -> np.ndarray:
        return self.alpha

    def observe_alignment(self, step: int, info: GradientAlignment) -> None:
        a, k = info.dev_alignment, info.curvature
        assert a is not None and k is not None  # wants_curvature: the probe measured both
        target = curvature_minimiser(a, k, self.params.curvature_weight, self.params.epsilon, self.alpha,
                                self.params.solver_steps)
        self.alpha = project_floor_simplex((1 - self.params.rate) * self.alpha + self.params.rate * target,
                                           self.params.epsilon)
        self.last = {"alignment": [round(float(x), 5) for x in a],
                     "curvature": [round(float(x), 5) for x in np.diag(k)]}

    def log_values(self) -> dict[str, Any]:
        return self.last

    def _state(self) -> dict[str, Any]:
        return {"alpha": self.alpha.tolist(), "last": self.last}

    def _load(self, state: dict[str, Any]) -> None:
        self.alpha = np.array(state["alpha"], dtype=np.float64)
        self.last = state["last"]


register("multidds", MultiDdsParams, MultiDds)
register("curvature_aware", CurvatureAwareParams, CurvatureAware)
