"""Samplers: the objects that own the mix of translation directions.

A sampler turns direction sizes (and, for later dynamic kinds, what training observes) into a
distribution p over directions, and draws directions from it with its own generator. The batch
stream asks it for p once per data chunk and reseeds it per chunk from (seed, stage, chunk), so
the data order is a pure function of those and of the sampler's saved state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .typed_yaml import ConfigError, bind

if TYPE_CHECKING:
    from .config import SamplingConfig


def temperature_probs(sizes: Sequence[float], tau: float) -> np.ndarray:
    """p_i ∝ D_i^(1/τ), computed in log space so τ→∞ and huge sizes stay exact."""
    d = np.asarray(sizes, dtype=np.float64)
    if np.any(d <= 0):
        raise ValueError(f"direction sizes must be positive, got {list(d)}")
    logits = np.log(d) / float(tau)
    logits -= logits.max()
    w = np.exp(logits)
    return w / w.sum()


def rng_for(*keys: int) -> np.random.Generator:
    """An independent generator for a tuple of integer keys (seed, stage, chunk, purpose...)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])))


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

    def observe_alignment(self, step: int, info: dict[str, Any]) -> None:
        """info["cos"][i, j] = cos(grad of train direction i, grad of dev direction j), and more
        (see `pipeline/alignment.py`); called every `every` steps when `needs_gradients` is set."""

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


@dataclass
class NoParams:
    pass


@dataclass
class TemperatureParams:
    temperature: float = 5.0

    def check(self, path: str) -> list[tuple[str, str]]:
        return [] if self.temperature > 0 else [(f"{path}.temperature", "must be > 0")]


@dataclass
class WeightsParams:
    weights: dict[str, float] = field(default_factory=dict)

    def check(self, path: str) -> list[tuple[str, str]]:
        out = [(f"{path}.weights.{k}", "must be >= 0") for k, v in self.weights.items() if v < 0]
        if not self.weights:
            out.append((f"{path}.weights", "must give a weight per direction"))
        elif sum(self.weights.values()) <= 0:
            out.append((f"{path}.weights", "must not all be zero"))
        return out


class ProportionalSampler(Sampler):
    kind = "proportional"

    def probabilities(self, step: int) -> np.ndarray:
        return self.sizes / self.sizes.sum()


class UniformSampler(Sampler):
    kind = "uniform"

    def probabilities(self, step: int) -> np.ndarray:
        return np.full(len(self.names), 1.0 / len(self.names))


class TemperatureSampler(Sampler):
    kind = "temperature"

    def __init__(self, names: Sequence[str], sizes: Sequence[int], params: TemperatureParams) -> None:
        super().__init__(names, sizes)
        self.tau = params.temperature
        self._p = temperature_probs(self.sizes, self.tau)

    def probabilities(self, step: int) -> np.ndarray:
        return self._p


class WeightsSampler(Sampler):
    kind = "weights"

    def __init__(self, names: Sequence[str], sizes: Sequence[int], params: WeightsParams) -> None:
        super().__init__(names, sizes)
        unknown = sorted(set(params.weights) - set(self.names))
        missing = sorted(set(self.names) - set(params.weights))
        if unknown or missing:
            raise ConfigError(
                [f"sampling.params.weights: unknown directions {unknown}, missing {missing} (stage has {self.names})"]
            )
        w = np.array([params.weights[n] for n in self.names], dtype=np.float64)
        if w.sum() <= 0:
            raise ConfigError(["sampling.params.weights: the stage's directions all have weight 0"])
        self._p = w / w.sum()

    def probabilities(self, step: int) -> np.ndarray:
        return self._p


@dataclass(frozen=True)
class SamplerKind:
    params: type
    build: Callable[[Sequence[str], Sequence[int], Any], Sampler]


REGISTRY: dict[str, SamplerKind] = {
    "proportional": SamplerKind(NoParams, lambda n, s, p: ProportionalSampler(n, s)),
    "uniform": SamplerKind(NoParams, lambda n, s, p: UniformSampler(n, s)),
    "temperature": SamplerKind(TemperatureParams, TemperatureSampler),
    "weights": SamplerKind(WeightsParams, WeightsSampler),
}


def register(kind: str, params: type, build: Callable[[Sequence[str], Sequence[int], Any], Sampler]) -> None:
    REGISTRY[kind] = SamplerKind(params, build)


def _registry() -> dict[str, SamplerKind]:
    from . import policies  # noqa: F401  (registers the dynamic weighting policies)

    return REGISTRY


def check_sampling(cfg: SamplingConfig, path: str) -> list[tuple[str, str]]:
    kind = _registry().get(cfg.kind)
    if kind is None:
        return [(f"{path}.kind", f"unknown sampler {cfg.kind!r}; known: {', '.join(sorted(REGISTRY))}")]
    out = []
    need = getattr(kind.build, "requires_apply", None)
    if need and cfg.apply != need:
        out.append((f"{path}.apply", f"{cfg.kind} needs apply: {need} (got {cfg.apply})"))
    try:
        bind(kind.params, cfg.params, path=f"{path}.params")
    except ConfigError as exc:
        out += [(f"{path}.params", e) for e in exc.errors]
    return out


def build_sampler(cfg: SamplingConfig, names: Sequence[str], sizes: Sequence[int], horizon: int = 0) -> Sampler:
    """`horizon`: the stage's length in steps, for schedules that span the stage."""
    kind = _registry()[cfg.kind]
    params = bind(kind.params, cfg.params, path="sampling.params")
    if hasattr(params, "horizon") and not getattr(params, "steps", None):
        params.horizon = horizon
    sampler = kind.build(names, sizes, params)
    sampler.every = cfg.every
    return sampler
