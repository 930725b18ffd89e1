import math

import numpy as np
import pytest
import torch

from pipeline.gradients.surgery import _others, graddrop, gradvac, pcgrad, target_projection


def ref_pcgrad(vecs, rng):
    out = []
    for i in range(len(vecs)):
        gi = vecs[i].copy()
        for j in _others(len(vecs), i, rng):
            dot = gi @ vecs[j]
            if dot < 0:
                gi = gi - dot / (vecs[j] @ vecs[j]) * vecs[j]
        out.append(gi)
    return np.sum(out, axis=0)


def ref_gradvac(vecs, phi_hat, beta, rng):
    phi_hat = phi_hat.copy()
    out = []
    for i in range(len(vecs)):
        gi = vecs[i].copy()
        for j in _others(len(vecs), i, rng):
            phi = gi @ vecs[j] / (np.linalg.norm(gi) * np.linalg.norm(vecs[j]))
            t = phi_hat[i, j]
            if phi < t:
                w = np.linalg.norm(gi) * (t * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - t**2)) / (
                    np.linalg.norm(vecs[j]) * math.sqrt(1 - t**2))
                gi = gi + w * vecs[j]
            phi_hat[i, j] = (1 - beta) * t + beta * phi
        out.append(gi)
    return np.sum(out, axis=0), phi_hat


def ref_target(vecs, target):
    out = []
    for g in vecs:
        dot = g @ target
        out.append(g - dot / (target @ target) * target if dot < 0 else g)
    return np.sum(out, axis=0)


def task_vectors(t, kind, rng, n=300):
    if kind == "random":
        return rng.normal(size=(t, n))
    base = rng.normal(size=n)
    if kind == "no_conflict":  # all close to one direction: every pairwise dot is positive
        return np.stack([base + 0.1 * rng.normal(size=n) for _ in range(t)])
    # all conflict: alternate signs around a shared direction plus orthogonal noise
    return np.stack([(-1) ** i * base * (1 + i) + 0.05 * rng.normal(size=n) for i in range(t)])


@pytest.mark.parametrize("t", [2, 3, 5, 8])
@pytest.mark.parametrize("kind", ["random", "no_conflict", "all_conflict"])
def test_gram_combinations_equal_the_float64_reference(t, kind):
    rng = np.random.default_rng(t * 10 + len(kind))
    vecs = task_vectors(t, kind, rng)
    g = vecs @ vecs.T
    c = pcgrad(g, np.random.default_rng(5))
    np.testing.assert_allclose(c @ vecs, ref_pcgrad(vecs, np.random.default_rng(5)), atol=1e-6 * np.abs(vecs).max())
    phi0 = np.random.default_rng(1).uniform(-0.2, 0.6, size=(t, t))
    c2, phi = gradvac(g, phi0, 0.01, np.random.default_rng(7))
    want, want_phi = ref_gradvac(vecs, phi0, 0.01, np.random.default_rng(7))
    np.testing.assert_allclose(c2 @ vecs, want, atol=1e-6 * np.abs(want).max())
    np.testing.assert_allclose(phi, want_phi, atol=1e-9)
    target = rng.normal(size=vecs.shape[1]) - (0.5 * vecs.mean(0) if kind == "all_conflict" else 0)
    ext = np.vstack([vecs, target])
    c3 = target_projection(ext @ ext.T)
    np.testing.assert_allclose(c3 @ ext, ref_target(vecs, target), atol=1e-6 * np.abs(vecs).max())
    if kind == "no_conflict":
        np.testing.assert_allclose(c, np.ones(t))  # nothing to project


def test_graddrop_keeps_exactly_what_the_rule_says():
    g = torch.tensor([[1.0, -2.0, 3.0, 0.5], [-1.0, -1.0, 1.0, -0.5]])
    # purity P = ½(1 + Σg/Σ|g|): [0.5, 0.0, 1.0, 0.5]
    u = torch.tensor([0.4, 0.3, 0.9, 0.6])
    # col0: P>U keeps positives (1.0); col1: P<U keeps negatives (-2, -1); col2: P>U keeps both
    # positives; col3: P<U keeps the negative (-0.5)
    np.testing.assert_allclose(graddrop(g, u), [1.0, -3.0, 4.0, -0.5])
    np.testing.assert_allclose(graddrop(g, u, leak=0.5), [1.0 - 0.5, -3.0, 4.0, 0.25 - 0.5])
