"""The sampler base class and the registry of sampler kinds: what every balancing policy builds on.

Policies import only this module; the package's `__init__` imports every kind, so whoever imports
anything of `pipeline.balance` finds the registry full before a recipe is checked or a sampler built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.rng import rng_for


@dataclass
class GradientAlignment:
    """What the gradient probe measured for a policy with `needs_gradients`
    (`pipeline/gradients/probe.py`), rows the stage's train directions, columns every dev direction."""

    cos: np.ndarray  # [train, dev] cosines between per-direction train and dev gradients
    dots: np.ndarray  # [train, dev] their dot products
    train_norm: np.ndarray  # [train] gradient norms
    dev_norm: np.ndarray  # [dev]
    dev_alignment: np.ndarray | None = None  # with wants_curvature: unit train gradient · mean dev gradient
    curvature: np.ndarray | None = None  # with wants_curvature: K[i, j] = v_iᵀ H_dev v_j


class Sampler:
    """Base class: a distribution over the stage's directions plus a generator to draw from it.

    Dynamic kinds (weighting policies) also see what training observes: `observe_train` after
    every step (per-direction mean NLL or, with `train_loss = "smoothed"`, label-smoothed loss; NaN where a direction had no tokens, and token counts,
    identical on every rank), `observe_dev` at evaluations and, when `needs_gradients` is set,
    `observe_alignment` with cosines between per-direction train and dev gradients. `step` is
    the stage-local step. Everything they learn must be in `_state()` so a resume is exact.
    """

    kind = "base"
    dynamic = False
    needs_gradients = False  # True: observe_alignment every `every` steps (costs extra backward passes)
    every = 1  # update cadence in steps (SamplingConfig.every)
    train_loss = "nll"  # what observe_train receives: "nll", or "smoothed" (the label-smoothed loss)
    wants_curvature = False  # with needs_gradients: also the curvature matrix and the dev alignment
    wants_reference = False  # the trainer scores every step's targets with a frozen reference model
    requires_apply: str | None = None  # the one `apply:` this kind works with (None: any)
    probe_tokens: int | None = None  # with needs_gradients: tokens per probe batch (None: train.max_tokens)
    curvature_tokens: int = 0  # with wants_curvature: dev tokens of the curvature batch

    def __init__(self, names: Sequence[str], sizes: Sequence[int]) -> None:
        if len(names) != len(sizes) or not names:
            raise ValueError("a sampler needs one size per direction and at least one direction")
        self.names = list(names)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.data_p = self.sizes / self.sizes.sum()
        self._rng = rng_for(0)

    def probabilities(self, step: int) -> np.ndarray:
        raise NotImplementedError

    def observe_train(self, step: int, loss: np.ndarray, tokens: np.ndarray) -> None:
        """Called after every optimizer step of the stage."""

    def observe_dev(self, step: int, dev: np.ndarray) -> None:
        """Called at evaluation steps with the dev NLL of the stage's directions."""

    def observe_alignment(self, step: int, info: GradientAlignment) -> None:
        """Called every `every` steps when `needs_gradients` is set."""

    def log_values(self) -> dict[str, Any]:
        """Scalars worth logging beside p (a temperature, say)."""
        return {}

    def _state(self) -> dict[str, Any]:
        return {}

    def _load(self, state: dict[str, Any]) -> None:
        pass

    def reseed(self, *keys: int) -> None:
        self._rng = rng_for(*keys)

    def draw(self, n: int, p: np.ndarray | None = None) -> np.ndarray:
        """n direction indices (into `names`) drawn i.i.d. from p (default: p at step 0)."""
        probs = self.probabilities(0) if p is None else p
        return self._rng.choice(len(self.names), size=n, p=probs)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "names": list(self.names), "rng": self._rng.bit_generator.state,
                "policy": self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind or list(state.get("names", [])) != self.names:
            raise ValueError(
                f"sampler state is for {state.get('kind')} over {state.get('names')}, "
                f"this sampler is {self.kind} over {self.names}"
            )
        self._rng.bit_generator.state = state["rng"]
        self._load(state.get("policy", {}))


@dataclass(frozen=True)
class SamplerKind:
    params: type
    build: Callable[[Sequence[str], Sequence[int], Any], Sampler]


REGISTRY: dict[str, SamplerKind] = {}


def register(kind: str, params: type, build: Callable[[Sequence[str], Sequence[int], Any], Sampler]) -> None:
    REGISTRY[kind] = SamplerKind(params, build)
