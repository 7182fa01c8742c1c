"""Pure-torch reference of the kernels in :mod:`.flash`: forward, JVP and backward, in closed form.

Dense and in fp32, for small sizes (tests, documentation of the math). Same signatures and
conventions as the kernels: ``allowed`` is the (Fq, Fk) frame matrix or None; rows with no
allowed key give O = 0, LSE = -inf, tO = 0, tLSE = 0 and zero gradients.

With S = Q K^T * scale (masked entries -inf), P = softmax(S), O = P V (DESIGN section 5):
* JVP:  tS = (tQ K^T + Q tK^T) * scale, tP = P * (tS - rowsum(P * tS)), tO = tP V + P tV,
  tLSE = rowsum(P * tS);
* VJP:  dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O) + dLSE),
  dQ = dS K * scale, dK = dS^T Q * scale.
"""

from __future__ import annotations

import torch

__all__ = ["forward", "jvp", "backward"]


def _scores(q, k, allowed, tokens_per_frame, scale):
    """S (B, H, Sq, Sk) fp32 with masked entries at -inf, from the dense element mask."""
    s = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale
    if allowed is not None:
        keep = allowed.to(s.device, torch.bool)
        keep = keep.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)
        s = s.masked_fill(~keep, float("-inf"))
    return s


def _probs_from_lse(s, lse):
    """P = exp(S - LSE), exactly 0 on rows with LSE = -inf."""
    return torch.exp(s - lse.masked_fill(lse == float("-inf"), float("inf"))[..., None])


def forward(q, k, v, allowed, tokens_per_frame, scale):
    """(O, LSE): O (B, H, Sq, D) in q's dtype, LSE (B, H, Sq) fp32 (-inf on empty rows)."""
    s = _scores(q, k, allowed, tokens_per_frame, scale)
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(_probs_from_lse(s, lse), v.float()).to(q.dtype), lse


def jvp(q, k, v, tq, tk, tv, allowed, tokens_per_frame, scale):
    """(O, LSE, tO, tLSE) of attention along the tangents (tQ, tK, tV)."""
    s = _scores(q, k, allowed, tokens_per_frame, scale)
    lse = torch.logsumexp(s, dim=-1)
    p = _probs_from_lse(s, lse)
    ts = (torch.matmul(tq.float(), k.float().transpose(-2, -1)) + torch.matmul(q.float(), tk.float().transpose(-2, -1))) * scale
    pts = p * ts
    r = pts.sum(-1)  # (B, H, Sq): tLSE
    o = torch.matmul(p, v.float())
    to = torch.matmul(pts - p * r[..., None], v.float()) + torch.matmul(p, tv.float())
    return o.to(q.dtype), lse, to.to(q.dtype), r


def backward(q, k, v, o, lse, do, dlse, allowed, tokens_per_frame, scale):
    """(dQ, dK, dV) of L(O, LSE) given dO (B, H, Sq, D) and dLSE (B, H, Sq) or None.

    ``o`` and ``lse`` are the forward's outputs, used as the kernel uses them (Delta, P).
    """
    p = _probs_from_lse(_scores(q, k, allowed, tokens_per_frame, scale), lse)
    do = do.float()
    delta = (do * o.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    dv = torch.matmul(p.transpose(-2, -1), do)
    dp = torch.matmul(do, v.float().transpose(-2, -1))
    ds = p * (dp - delta[..., None])
    dq = torch.matmul(ds, k.float()) * scale
    dk = torch.matmul(ds.transpose(-2, -1), q.float()) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
