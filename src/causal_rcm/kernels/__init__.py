"""Leaf code: block-sparse frame masks, the attention dispatch, and our Triton attention kernels.

:mod:`.masks` defines :class:`BlockSparseMask` (which key frames each query frame sees);
:mod:`.dispatch` is the one attention function the model calls, with interchangeable
backends (``math``, ``sdpa``, ``flex``, ``triton``). The Triton kernels (:mod:`.op`: forward,
backward and forward-mode JVP; :mod:`.flash`: the kernels; :mod:`.reference`: the same math in
pure torch) need ``triton`` and are imported only when the ``triton`` backend is first used, so
this package imports without it. Nothing here imports the rest of the package.
"""

from causal_rcm.kernels import masks
from causal_rcm.kernels.dispatch import attention, available_backends, math_attention, register_backend
from causal_rcm.kernels.masks import BlockSparseMask

__all__ = ["BlockSparseMask", "attention", "available_backends", "masks", "math_attention", "register_backend"]
