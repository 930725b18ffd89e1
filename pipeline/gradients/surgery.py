"""Gradient surgery on ZeRO shards: PCGrad, GradVac, target-gradient projection and GradDrop.

PCGrad, GradVac and target projection turn the task gradients g_1..g_T into a linear
combination Σ c_k g_k whose coefficients depend only on the Gram matrix G_ij = g_i·g_j. Each rank
holds a shard of every task gradient (see `Engine.local_grad_shard`), computes its part of G, and
one all-reduce of T×T numbers (per block) gives G; the small problem is solved identically on every
rank and each rank writes Σ c_k (its shard of g_k) back before the optimizer step. That is exact
under ZeRO 0-3. GradDrop is element-wise and runs on each rank's own shard.

The functions below work on G alone (and are tested against a float64 reference on full vectors).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _others(t: int, i: int, rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(t)
    return order[order != i]


def pcgrad(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coefficients of Σ_i g_i' where g_i' is g_i projected, in a random order of the other tasks,
    onto the normal plane of each original g_j it conflicts with (Yu et al. 2020)."""
    t = len(g)
    c = np.eye(t)
    for i in range(t):
        for j in _others(t, i, rng):
            dot = c[i] @ g[:, j]
            if dot < 0 and g[j, j] > 0:
                c[i, j] -= dot / g[j, j]
    return c.sum(0)


def gradvac(g: np.ndarray, phi_hat: np.ndarray, beta: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gradient Vaccine (Wang et al. 2020): when cos(g_i', g_j) = φ falls below its EMA target φ̂_ij,
    add ‖g_i'‖(φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_j‖√(1−φ̂²)) · g_j; then φ̂ ← (1−β)φ̂ + βφ."""
    t = len(g)
    c = np.eye(t)
    phi_hat = phi_hat.copy()
    for i in range(t):
        for j in _others(t, i, rng):
            norm_i = math.sqrt(max(c[i] @ g @ c[i], 0.0))
            norm_j = math.sqrt(max(g[j, j], 0.0))
            if norm_i == 0 or norm_j == 0:
                continue
            phi = float(np.clip((c[i] @ g[:, j]) / (norm_i * norm_j), -1.0, 1.0))
            target = phi_hat[i, j]
            if phi < target:
                w = norm_i * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2)) / (
                    norm_j * math.sqrt(1 - target**2))
                c[i, j] += w
            phi_hat[i, j] = (1 - beta) * target + beta * phi
    return c.sum(0), phi_hat


def target_projection(g: np.ndarray) -> np.ndarray:
    """`g` is (T+1)×(T+1) with the target (dev) gradient last: each task gradient that conflicts
    with the target is projected onto its normal plane (Yang et al. 2021). Coefficients over the
    T+1 vectors (the target's own is what the projections subtract)."""
    t = len(g) - 1
    c = np.zeros(t + 1)
    c[:t] = 1.0
    for i in range(t):
        dot = g[i, t]
        if dot < 0 and g[t, t] > 0:
            c[t] -= dot / g[t, t]
    return c


def graddrop(shards: torch.Tensor, u: torch.Tensor, leak: float = 0.0) -> torch.Tensor:
    """GradDrop (Chen et al. 2020) on [T, n] task gradients: sign purity P = ½(1 + Σg / Σ|g|); keep
    g_i where (P > U and g_i > 0) or (P < U and g_i < 0), U uniform; `leak` keeps that fraction of
    every dropped element. Returns the summed surviving gradient."""
    total = shards.sum(0)
    purity = 0.5 * (1 + total / shards.abs().sum(0).clamp_min(1e-30))
    keep = ((purity > u) & (shards > 0)) | ((purity < u) & (shards < 0))
    mask = leak + (1 - leak) * keep.to(shards.dtype)
    return (mask * shards).sum(0)


def cosines(g: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.maximum(np.diag(g), 1e-30))
    return g / d[:, None] / d[None, :]
