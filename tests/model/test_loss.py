from __future__ import annotations

import pytest
import torch

from pipeline.model.loss import smoothed_nll


def reference(logits: torch.Tensor, target: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    lp = torch.log_softmax(logits.float(), -1)
    nll = -lp.gather(1, target[:, None]).squeeze(1)
    return (1 - eps) * nll - eps * lp.mean(-1), nll


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_values_and_gradients_match_autograd(eps: float, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(13, 37, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    target = torch.randint(0, 37, (13,), generator=g)
    w_loss, w_nll = torch.randn(13, generator=g, dtype=torch.float64), torch.randn(13, generator=g, dtype=torch.float64)
    loss, nll = smoothed_nll(logits, target, eps)
    ref_loss, ref_nll = reference(logits, target, eps)
    keep = {"retain_graph": True}
    torch.testing.assert_close(loss, ref_loss.float(), check_dtype=False, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, ref_nll.float(), check_dtype=False, rtol=1e-5, atol=1e-5)
    # Gradients through each output alone and through both.
    for a, b in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
        (got,) = torch.autograd.grad((a * w_loss * loss.double()).sum() + (b * w_nll * nll.double()).sum(), logits, **keep)
        (want,) = torch.autograd.grad((a * w_loss * ref_loss).sum() + (b * w_nll * ref_nll).sum(), logits, **keep)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_unused_nll_output_and_bf16_logits() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 50, generator=g).bfloat16().requires_grad_()
    target = torch.randint(0, 50, (8,), generator=g)
    loss, nll = smoothed_nll(logits, target, 0.1)
    assert loss.dtype == nll.dtype == torch.float32
    loss.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    ref = logits.detach().float().requires_grad_()
    reference(ref, target, 0.1)[0].sum().backward()
    torch.testing.assert_close(logits.grad.float(), ref.grad, rtol=0.02, atol=1e-3)
    # Each row's gradient sums to 0: softmax and the smoothed target both sum to 1.
    torch.testing.assert_close(ref.grad.sum(-1), torch.zeros(8), atol=1e-6, rtol=0)


def test_second_derivatives_for_hessian_vector_products() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 11, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (6,), generator=g)
    vec = torch.randn(6, 11, generator=g, dtype=torch.float64)

    def hvp(loss_fn) -> torch.Tensor:
        (grad,) = torch.autograd.grad(loss_fn(x, target, 0.1)[0].sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((grad * vec).sum(), x)
        return h

    torch.testing.assert_close(hvp(smoothed_nll), hvp(reference), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_distillation_output_and_gradients_match_autograd(eps: float) -> None:
    from pipeline.model.loss import smoothed_nll_kd

    g = torch.Generator().manual_seed(3)
    logits = (2 * torch.randn(9, 23, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 23, (9,), generator=g)
    q = torch.softmax(torch.randn(9, 23, generator=g, dtype=torch.float64), -1)
    w = torch.randn(3, 9, generator=g, dtype=torch.float64)
    loss, nll, kd = smoothed_nll_kd(logits, target, eps, q)
    ref_loss, ref_nll = reference(logits, target, eps)
    ref_kd = -(q * torch.log_softmax(logits, -1)).sum(-1)  # -Σ_v q(v) log p(v)
    for got, want in ((loss, ref_loss), (nll, ref_nll), (kd, ref_kd)):
        torch.testing.assert_close(got, want.float(), check_dtype=False, rtol=1e-5, atol=1e-5)
    (got,) = torch.autograd.grad((w[0] * loss.double() + w[1] * nll.double() + w[2] * kd.double()).sum(), logits)
    (want,) = torch.autograd.grad((w[0] * ref_loss + w[1] * ref_nll + w[2] * ref_kd).sum(), logits)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
