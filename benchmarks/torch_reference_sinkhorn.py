"""The reference's log-domain Sinkhorn as a plain PyTorch loop, written from the spec.

Spec section 2.2 (``log_sinkhorn_iterations`` of the reference, ``mmpt/losses/nce.py``):
potentials start at zero; each of ``iters`` iterations updates the rows, then the columns,
with ``torch.logsumexp``; no convergence check; the plan is computed without gradient.
This is the PyTorch baseline of ``benchmarks/sinkhorn.py`` (not used by the library).
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def log_sinkhorn_iterations(
    log_kernel: torch.Tensor,  # [..., M, N]  Z = S / eps
    log_a: torch.Tensor,  # [..., M]
    log_b: torch.Tensor,  # [..., N]
    iters: int,
) -> torch.Tensor:
    """Returns ``log P = Z + u[..., :, None] + v[..., None, :]`` after ``iters`` iterations."""
    u = torch.zeros_like(log_a)
    v = torch.zeros_like(log_b)
    for _ in range(iters):
        u = log_a - torch.logsumexp(log_kernel + v.unsqueeze(-2), dim=-1)  # rows first
        v = log_b - torch.logsumexp(log_kernel + u.unsqueeze(-1), dim=-2)  # then columns
    return log_kernel + u.unsqueeze(-1) + v.unsqueeze(-2)


class TorchSinkhorn:
    """Holds float32 tensors (CPU or ``device``) of one problem set; ``__call__`` returns the plan tensor."""

    def __init__(self, scores: np.ndarray, a: np.ndarray, b: np.ndarray, epsilon: float, iters: int,
                 device: str = "cpu"):
        # Z = S / eps is part of the timed work in the JAX variants, so it is here too.
        self.device = torch.device(device)
        self.scores = torch.from_numpy(np.array(scores, np.float32)).to(self.device)  # [..., M, N]
        self.log_a = torch.from_numpy(np.log(np.asarray(a, np.float32))).to(self.device)  # [..., M]
        self.log_b = torch.from_numpy(np.log(np.asarray(b, np.float32))).to(self.device)  # [..., N]
        self.epsilon = float(epsilon)
        self.iters = int(iters)

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        log_plan = log_sinkhorn_iterations(self.scores / self.epsilon, self.log_a, self.log_b, self.iters)
        plan = log_plan.exp()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the timed work ends when the GPU is done
        return plan
