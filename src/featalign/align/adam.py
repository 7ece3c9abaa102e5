"""Adam on one tensor, without :mod:`torch.optim`.

``torch.optim``'s optimisers import ``torch._dynamo`` the first time a step runs
(their methods are wrapped to disable it); that import costs 2–3 s of CPU, which an
align job, taking 5–30 s in the default run, would pay once per job. This is the same
update as ``torch.optim.Adam``'s single-tensor path (no weight decay, no AMSGrad), in
the same order of floating-point operations, so that on the CPU the two give the same
iterates bit for bit (``tests/test_align.py::TestAdam`` checks it).
"""

from __future__ import annotations

import torch


class Adam:
    """Adam (Kingma & Ba, 2015) on one leaf tensor ``param`` with ``requires_grad``.

    Use as ``torch.optim.Adam([param], lr=lr)``: ``zero_grad()``, a backward pass that
    fills ``param.grad``, then ``step()``.
    """

    def __init__(
        self,
        param: torch.Tensor,
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not param.requires_grad:
            raise ValueError("Adam needs a tensor that requires grad")
        self.param = param
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.steps = 0

    def zero_grad(self) -> None:
        """Forget the gradient (as ``torch.optim``'s ``set_to_none=True``)."""
        self.param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of ``param`` from ``param.grad``."""
        grad = self.param.grad
        if grad is None:
            return
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        step = float(self.steps)
        bias_correction1 = 1 - self.beta1**step
        bias_correction2 = 1 - self.beta2**step
        step_size = self.lr / bias_correction1
        denom = (self.exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-step_size)
