"""The curvature's Hessian-vector products (pipeline/gradients/probe.py) against independent references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.gradients.probe import hessian_vector_products
from pipeline.model.transformer import ModelArch, Seq2SeqTransformer


def test_products_equal_the_full_hessian_of_a_small_network() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    w1, w2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    shapes = [w1.shape, w2.shape]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        a, b = flat[:20].view(shapes[0]), flat[20:].view(shapes[1])
        return F.cross_entropy(torch.tanh(x @ a) @ b, y)

    theta = torch.cat([w1.reshape(-1), w2.reshape(-1)])
    hessian = torch.autograd.functional.hessian(loss_of, theta)
    params = [w1.requires_grad_(), w2.requires_grad_()]
    vectors = [torch.randn(32, dtype=torch.float64) for _ in range(3)]
    got = hessian_vector_products(loss_of(torch.cat([p.reshape(-1) for p in params])), params, vectors)
    for v, hv in zip(vectors, got):
        torch.testing.assert_close(hv, (hessian @ v).float())


def test_products_through_the_translation_model_match_finite_differences() -> None:
    torch.manual_seed(0)
    arch = ModelArch(d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32, label_smoothing=0.0)
    model = Seq2SeqTransformer(arch, vocab_size=30, pad_id=0).double().eval()
    params = [p for p in model.parameters() if p.requires_grad]
    src, tgt = torch.randint(4, 30, (6, 7)), torch.randint(4, 30, (6, 8))
    src[0, 5:] = 0  # padding on both sides
    tgt[1, 6:] = 0

    def loss() -> torch.Tensor:
        _, nll = model(src, tgt[:, :-1], tgt[:, 1:])
        return nll.sum() / (tgt[:, 1:] != 0).sum()

    def grad_at(shift: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for p, s in zip(params, torch.split(shift, [p.numel() for p in params])):
                p.add_(s.view_as(p))
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss(), params)])
        with torch.no_grad():
            for p, s in zip(params, torch.split(shift, [p.numel() for p in params])):
                p.sub_(s.view_as(p))
        return g.double()

    n = sum(p.numel() for p in params)
    u, v = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    u, v = u / u.norm(), v / v.norm()
    hu, hv = hessian_vector_products(loss(), params, [u, v])
    h = 1e-3
    # central differences of the gradient along v: H v to O(h²)
    reference = (grad_at(h * v) - grad_at(-h * v)) / (2 * h)
    torch.testing.assert_close(hv.double(), reference, rtol=2e-3, atol=5e-5)
    # the quadratic form K = Vᵀ H V is symmetric
    assert abs(float(u.float() @ hv - v.float() @ hu)) < 1e-4 * float(hu.norm())
