"""The reference's loss formulation in PyTorch, written from the spec (section 2.8).

A baseline for ``benchmarks/train_step.py``: dense ``[B, B, T, F]`` similarity tensor, the
"exp-sum minus #masked" trick, u-then-v log-domain Sinkhorn loops under ``no_grad``; the
same arithmetic as the authors' ``MMContraLoss`` / ``SequenceContrastLoss``.
"""

from __future__ import annotations

import math

import torch


def _sinkhorn(z: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, iters: int) -> torch.Tensor:
    u = torch.zeros_like(log_a)
    v = torch.zeros_like(log_b)
    for _ in range(iters):
        u = log_a - torch.logsumexp(z + v.unsqueeze(-2), dim=-1)
        v = log_b - torch.logsumexp(z + u.unsqueeze(-1), dim=-2)
    return z + u.unsqueeze(-1) + v.unsqueeze(-2)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min())


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def clip_loss(pv, pt, beta=0.3, iters=50):
    s = pv @ pt.t()
    b = s.shape[0]
    n0 = -math.log(2 * b)
    with torch.no_grad():
        a = torch.full((b,), n0, dtype=s.dtype)
        q = torch.exp(_sinkhorn(s, a, a, iters) - n0)
    eye = torch.eye(b, dtype=s.dtype) * torch.tensor(1 - beta, dtype=torch.float32).to(s.dtype)
    lv = -(torch.log_softmax(s, 1) * (beta * q + eye)).sum(1).mean()
    lt = -(torch.log_softmax(s.t(), 1) * (beta * q.t() + eye)).sum(1).mean()
    return lv + lt


def video_paragraph_loss(pv, pt, tv, tt, mv, mt, seq=8, ratio=0.3, eps=0.1, iters=50, alpha=1.0, fw=0.5,
                         logit_scale=math.log(1 / 0.07)):
    c_mean = _minmax(_unit(pt) @ _unit(pv).t())
    s = torch.einsum("atd,bfd->abtf", _unit(tt), _unit(tv)) * mt[:, None, :, None] * mv[None, :, None, :]
    e = torch.exp(s / alpha)
    t2v = (alpha * torch.log(e.sum(3) - (1 - mv).sum(1)[None, :, None])).sum(2) / mt.sum(1)[:, None]
    v2t = (alpha * torch.log(e.sum(2) - (1 - mt).sum(1)[:, None, None])).sum(2) / mv.sum(1)[None, :]
    c = (fw * c_mean + (_minmax(t2v) + _minmax(v2t)) / 2) / (fw + 1)
    b = c.shape[0]
    n = b // seq
    g = c.reshape(n, seq, n, seq).permute(0, 2, 1, 3).reshape(n * n, seq, seq)
    with torch.no_grad():
        p = torch.kthvalue(torch.diagonal(c), int(ratio * b)).values
        sb = torch.full((n * n, seq + 1, seq + 1), float(p) / eps, dtype=c.dtype)
        sb[:, :seq, :seq] = g / eps
        n0 = -math.log(2 * seq)
        a = torch.cat([torch.full((seq,), n0), torch.tensor([math.log(seq) + n0])]).to(c.dtype)
        a = a.expand(n * n, seq + 1)
        pi = torch.exp(_sinkhorn(sb, a, a, iters) - n0)[:, :seq, :seq]
        pi = pi * seq / pi.sum((1, 2), keepdim=True)
    scale = torch.exp(torch.tensor(logit_scale, dtype=torch.float32)).to(c.dtype)
    logits = scale * (pi * g).sum((1, 2)).reshape(n, n)
    y = torch.arange(n)
    return torch.nn.functional.cross_entropy(logits, y) + torch.nn.functional.cross_entropy(logits.t(), y)


def norton_loss(pv, pt, tv, tt, mv, mt, weight=0.1, **kwargs):
    return clip_loss(pv, pt) + weight * video_paragraph_loss(pv, pt, tv, tt, mv, mt, **kwargs)
