"""Block-sparse FlashAttention kernels (Triton): forward, backward and JVP under frame masks.

``attention(q, k, v, mask=None, scale=None)`` is the public op ((B, H, S, D) layout); it
supports ordinary backward, ``torch.autograd.forward_ad``, ``torch.func.jvp`` and
``torch.compile``. Importing this package registers it as the ``"triton"`` backend of
:func:`causal_rcm.models.attention.attention`. The kernels live in :mod:`.flash`, a
pure-torch reference of the same math in :mod:`.reference`.
"""

from ..models.attention import register_backend
from . import reference
from .op import FlashAttention, attention, attention_jvp, attention_with_lse

__all__ = ["attention", "attention_with_lse", "attention_jvp", "FlashAttention", "reference"]


def _backend(q, k, v, mask, scale):
    return attention(q, k, v, mask, scale)


register_backend("triton", _backend)
