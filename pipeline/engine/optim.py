"""AdamW that can skip a step on request, leaving parameters and moments untouched."""

from __future__ import annotations

from typing import Any

import torch


class SkippableAdamW(torch.optim.AdamW):
    """The trainer sets `skip_next` when any rank saw a non-finite loss; with `check_grads` (used
    when this optimizer holds the full gradients, i.e. no ZeRO partitioning) it also skips when a
    gradient is non-finite. DeepSpeed's own ZeRO and bf16 wrappers skip non-finite gradient norms
    before they get here."""

    def __init__(self, params: Any, check_grads: bool = False, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.skip_next = False
        self.last_skipped = False
        self.check_grads = check_grads

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        skip = self.skip_next
        if not skip and self.check_grads:
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            skip = bool(grads) and not bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())
        self.skip_next, self.last_skipped = False, skip
        if skip:
            return None
        return super().step(closure)
