"""Samplers: the objects that own the mix of translation directions.

A sampler turns direction sizes (and, for later dynamic kinds, what training observes) into a
distribution p over directions, and draws directions from it with its own generator. The batch
stream asks it for p once per data chunk and reseeds it per chunk from (seed, stage, chunk), so
the data order is a pure function of those and of the sampler's saved state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.balance.base import REGISTRY, Sampler, SamplerKind, register
from pipeline.config import SamplingConfig
from pipeline.core.mixing import temperature_probs
from pipeline.core.typed_yaml import ConfigError, bind


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


for _kind, _params, _build in (
    ("proportional", NoParams, lambda n, s, p: ProportionalSampler(n, s)),
    ("uniform", NoParams, lambda n, s, p: UniformSampler(n, s)),
    ("temperature", TemperatureParams, TemperatureSampler),
    ("weights", WeightsParams, WeightsSampler),
):
    register(_kind, _params, _build)


def _registry() -> dict[str, SamplerKind]:
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
