from __future__ import annotations

import torch
from test_model import PAD, batch, small, teacher_forcing

from pipeline.model.layers import Packing, add_dropout, dropout


def test_packing_round_trip_and_positions() -> None:
    tokens = batch([4, 1, 3], seed=0)
    p = Packing(tokens, PAD)
    assert p.rows.tolist() == [0, 1, 2, 3, 4, 8, 9, 10]
    assert p.positions().tolist() == [0, 1, 2, 3, 0, 0, 1, 2]
    x = torch.arange(12 * 2, dtype=torch.float32).view(3, 4, 2)
    packed = p.pack(x)
    assert packed.shape == (8, 2)
    dense = p.pad(packed)
    assert torch.equal(dense[tokens.ne(PAD)], x[tokens.ne(PAD)])
    assert (dense[tokens.eq(PAD)] == 0).all()


def test_cpu_dropout_rate_scale_and_gradient() -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.25, True)
    kept = y.ne(0)
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    # Four elements share a 64-bit draw: each of the four positions is kept at the same rate.
    for lane in range(4):
        assert abs(kept[lane::4].float().mean().item() - 0.75) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y / d x is the same mask and scale
    assert dropout(x, 0.25, False) is x and dropout(x, 0.0, True) is x


def test_cpu_add_dropout_matches_its_definition_to_second_order() -> None:
    torch.manual_seed(1)
    x = torch.randn(50_000, dtype=torch.float64, requires_grad=True)
    y = torch.randn(50_000, dtype=torch.float64, requires_grad=True)
    out = add_dropout(x, y, 0.1, True)
    kept = (out - x).detach().ne(0)
    assert abs(kept.double().mean().item() - 0.9) < 0.005
    torch.testing.assert_close(out, x + torch.where(kept, y / 0.9, 0.0), rtol=0, atol=1e-12)
    # Double backward through the custom function, as curvature_aware's Hessian-vector products need.
    gx, gy = torch.autograd.grad((out**2).sum(), (x, y), create_graph=True)
    torch.testing.assert_close(gx, 2 * out)
    torch.testing.assert_close(gy, torch.where(kept, 2 * out / 0.9, 0.0))
    (hy,) = torch.autograd.grad(gy.sum(), y)
    torch.testing.assert_close(hy, torch.where(kept, 2 / 0.81, 0.0).double())
    assert torch.equal(add_dropout(x, y, 0.1, False), x + y)


def test_target_padding_invariance_and_misaligned_targets() -> None:
    model = small().eval()
    src = batch([5, 5, 5], seed=7)
    tgt_in, tgt_out = teacher_forcing([7, 3, 5], seed=8)
    with torch.no_grad():
        loss, nll = model(src, tgt_in, tgt_out)
        for i, n in enumerate([7, 3, 5]):
            alone, _ = model(src[i : i + 1], tgt_in[i : i + 1, :n], tgt_out[i : i + 1, :n])
            torch.testing.assert_close(loss[i : i + 1, :n], alone, rtol=0, atol=1e-5)
        # A target masked out where its input is real: that position scores 0, the others do not move.
        masked = tgt_out.clone()
        masked[0, 2] = PAD
        loss2, _ = model(src, tgt_in, masked)
    assert loss2[0, 2] == 0
    keep = masked.ne(PAD)
    torch.testing.assert_close(loss2[keep], loss[keep], rtol=0, atol=1e-6)
