"""Float64 numpy transcription of the reference computations (spec 2.2-2.8).

A test oracle, written independently of norton_jax: dense tensors, the reference's own
"exp-sum minus the number of masked entries" trick, explicit loops where the reference
loops.  Only for small inputs.
"""

import numpy as np
from scipy.special import logsumexp


def sinkhorn_log(z, log_a, log_b, iters):
    """The reference's log_sinkhorn_iterations: u then v, from zero, no stopping."""
    u = np.zeros_like(log_a)
    v = np.zeros_like(log_b)
    for _ in range(iters):
        u = log_a - logsumexp(z + v[..., None, :], axis=-1)
        v = log_b - logsumexp(z + u[..., :, None], axis=-2)
    return z + u[..., :, None] + v[..., None, :]


def bucket_plan(g, p, eps, iters):
    """log_optimal_transport_prompt for one [L, L] problem (spec 2.4.6), bucket dropped."""
    m, n = g.shape
    sbar = np.full((m + 1, n + 1), p / eps)
    sbar[:m, :n] = g / eps
    n0 = -np.log(m + n)
    a = np.concatenate([np.full(m, n0), [np.log(n) + n0]])
    b = np.concatenate([np.full(n, n0), [np.log(m) + n0]])
    return np.exp(sinkhorn_log(sbar, a, b, iters) - n0)[:m, :n]


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def minmax(x):
    return (x - x.min()) / (x.max() - x.min())


def fine_grained_reference(tt, tv, mt, mv, alpha):
    """Dense reference code of spec 2.4.2: returns (t2v, v2t) before min-max."""
    s = np.einsum("atd,bfd->abtf", unit(tt), unit(tv)) * mt[:, None, :, None] * mv[None, :, None, :]
    e = np.exp(s / alpha)
    t2v = (alpha * np.log(e.sum(3) - (1 - mv).sum(1)[None, :, None])).sum(2) / mt.sum(1)[:, None]
    v2t = (alpha * np.log(e.sum(2) - (1 - mt).sum(1)[:, None, None])).sum(2) / mv.sum(1)[None, :]
    return t2v, v2t


def fine_grained_paper(tt, tv, mt, mv, alpha, reduce="lse"):
    """Paper Eq. 5 with exact masking: averages over valid tokens only (slow loops)."""
    tt, tv = unit(tt), unit(tv)
    bt, bv = len(tt), len(tv)
    t2v = np.zeros((bt, bv))
    v2t = np.zeros((bt, bv))
    for a in range(bt):
        for b in range(bv):
            s = tt[a][mt[a] > 0] @ tv[b][mv[b] > 0].T  # [words, frames]
            if reduce == "lse":
                t2v[a, b] = np.mean(alpha * logsumexp(s / alpha, axis=1))
                v2t[a, b] = np.mean(alpha * logsumexp(s / alpha, axis=0))
            else:
                t2v[a, b] = np.mean(s.max(axis=1))
                v2t[a, b] = np.mean(s.max(axis=0))
    return t2v, v2t
