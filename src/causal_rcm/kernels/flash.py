"""Block-sparse FlashAttention-2 kernels in Triton: forward (+ log-sum-exp), JVP (fused, or tangents
only from the saved O and LSE), backward.

Supported
* layout (B, H, S, D) with any strides whose last one is 1; Sq != Sk (queries against a KV cache);
* any sequence length: a ragged last tile is treated as a partial tile (bounds-checked);
* head dims 1..256: the wrappers zero-pad D to a power of two >= 16 (free when it already is one);
* fp32 (IEEE dot products, no TF32), bf16 and fp16 inputs; softmax statistics and all
  accumulators in fp32;
* frame-granular masks (:class:`~causal_rcm.kernels.masks.BlockSparseMask`): each query tile
  visits only the key tiles of its lists; FULL tiles run without any masking, PARTIAL tiles
  read ``allowed[q // tpf, k // tpf]`` from the tiny (Fq, Fk) frame matrix, EMPTY tiles are
  never touched. Rows with no allowed key give O = 0, LSE = -inf, tO = 0, tLSE = 0 and zero
  gradients.

Caveats
* the tile lists are built on the host from the frame matrix (O(#tiles), no S x S tensor)
  and cached per (frame matrix, lengths, tile sizes); mutate a mask in place and the cache
  notices through the tensor's version counter;
* the JVP kernels are first order only: there is no backward through them (sCM and MeanFlow
  take the JVP under ``no_grad``);
* no dropout, no attention bias, no GQA (H of q, k, v must match).

Math (DESIGN section 5; S = Q K^T * scale, P = softmax(S) row-wise, O = P V):
* forward: online softmax over key tiles (FlashAttention-2, Dao 2023, Alg. 1) in base 2:
  m_i running row max, l_i running row sum of exp2(S log2e - m_i), acc = sum P~ V;
  O = acc / l_i, LSE = (m_i + log2 l_i) ln 2.
* JVP with tangents (tQ, tK, tV): tS = (tQ K^T + Q tK^T) * scale,
  tP = P * (tS - rowsum(P * tS)), tO = tP V + P tV. In the same pass as the forward we
  accumulate, with the same rescaling by exp2(m_old - m_new), acc_t = sum P~ tV + (P~ * tS) V
  and r_i = rowsum(P~ * tS); then tO = acc_t / l_i - (r_i / l_i) O, and tLSE = r_i / l_i.
* JVP, tangents only (``FROM_LSE``; what ``torch.func.jvp`` needs, having run the forward
  already): with LSE known, P_ij = exp(S_ij - LSE_i) = exp2(S_ij log2e - LSE_i log2e) exactly,
  so one pass with no running max and no rescaling accumulates acc_t = P tV + (P * tS) V and
  r_i = rowsum(P * tS); then tO = acc_t - r_i O (O as saved), tLSE = r_i. Rows with no allowed
  key (LSE = -inf) get P = 0, hence tO = 0 and tLSE = 0. It skips the forward's P V and
  online-softmax work but still computes S = Q K^T.
* backward (FlashAttention-2, Alg. 2): Delta = rowsum(dO * O) - dLSE, P = exp(S - LSE),
  dV = P^T dO, dP = dO V^T, dS = P * (dP - Delta), dQ = dS K * scale, dK = dS^T Q * scale;
  one kernel per key tile for dK, dV (walking the transposed tile lists), one per query
  tile for dQ (walking the forward lists), so no atomics.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from causal_rcm.kernels.masks import FULL, PARTIAL, BlockSparseMask, left_aligned_indices

__all__ = ["forward", "jvp_tangents", "backward", "KernelConfig", "tile_lists"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _fix_interpreter_bf16_dot() -> None:
    """Make the CPU interpreter's ``tl.dot`` correct for bf16 operands.

    Triton's interpreter (3.6 and 3.9 checked) stores bf16 as uint16 and hands those raw bits
    to ``np.matmul``, so a bf16 ``tl.dot`` returns garbage there (GPUs are unaffected). We
    widen bf16 operands to fp32 first, exactly as the interpreter's own casts do.
    """
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_widens_bf16", False):
        return
    create_dot = builder.create_dot

    def widen(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        data = interpreter._convert_float(x.data, tl.bfloat16, tl.float32, None).view(interpreter.np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot_widening(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    create_dot_widening._widens_bf16 = True
    builder.create_dot = create_dot_widening


if interpreting():
    _fix_interpreter_bf16_dot()


# ----------------------------------------------------------------------------- kernels
# Lengths and frame counts change from call to call (KV-cache queries, chunk by chunk): no
# specialisation on them, so a new length does not compile a new kernel.
_SIZES_BY_Q_TILE = ["H", "SEQ_Q", "SEQ_K", "TILES_K", "FRAMES_K", "TOKENS_PER_FRAME"]
_SIZES_BY_K_TILE = ["H", "SEQ_Q", "SEQ_K", "TILES_Q", "FRAMES_K", "TOKENS_PER_FRAME"]


@triton.jit(do_not_specialize=_SIZES_BY_Q_TILE)
def _attn_fwd_kernel(
    Q, K, V, TQ, TK, TV,  # (B, H, S, D) inputs; the tangents are read only when JVP
    O, LSE, TO, TLSE,  # (B, H, Sq, D), (B, H, Sq) fp32, contiguous; O, LSE are inputs when FROM_LSE
    ALLOWED, FULL_NUM, FULL_IDX, PART_NUM, PART_IDX,  # frame matrix (Fq, Fk) int8; tile lists (Mq,), (Mq, Nk)
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_tqb, stride_tqh, stride_tqs, stride_tkb, stride_tkh, stride_tks, stride_tvb, stride_tvh, stride_tvs,
    H, SEQ_Q, SEQ_K, TILES_K, FRAMES_K, TOKENS_PER_FRAME, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, JVP: tl.constexpr, FROM_LSE: tl.constexpr, PRECISION: tl.constexpr,
):
    # FROM_LSE: (O, LSE) of these inputs are given, P = exp(S - LSE) exactly, and only the
    # tangents (tO, tLSE) are computed: no running max, no rescaling, no P V. A flag rather
    # than a second kernel: the tile walk, the loads and the masking are the same code.
    tl.static_assert(JVP or not FROM_LSE)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < SEQ_Q
    frame_q = offs_m // TOKENS_PER_FRAME
    qk_scale = sm_scale * 1.4426950408889634  # scores in log2 units

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    if JVP:
        tq = tl.load(TQ + b * stride_tqb + h * stride_tqh + offs_m[:, None] * stride_tqs + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        TK += b * stride_tkb + h * stride_tkh
        TV += b * stride_tvb + h * stride_tvh

    if FROM_LSE:
        # Rows with nothing allowed (LSE = -inf) and rows past the end get P = exp2(S - inf) = 0.
        out_rows = pid_bh.to(tl.int64) * SEQ_Q + offs_m
        lse = tl.load(LSE + out_rows, mask=row_ok, other=float("-inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    r_i = tl.zeros([BLOCK_M], tl.float32)
    acc_t = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # Phase 0 walks the FULL key tiles with no masking at all, phase 1 the PARTIAL ones
    # (mask boundaries and the ragged last tile) with the element mask.
    for phase in tl.static_range(2):
        if phase == 0:
            num_tiles = tl.load(FULL_NUM + pid_m)
            tile_idx = FULL_IDX + pid_m * TILES_K
        else:
            num_tiles = tl.load(PART_NUM + pid_m)
            tile_idx = PART_IDX + pid_m * TILES_K
        for it in range(num_tiles):
            cols = tl.load(tile_idx + it) * BLOCK_N + offs_n
            col_ok = cols < SEQ_K
            if phase == 0:
                kT = tl.load(K + cols[None, :] * stride_ks + offs_d[:, None])  # (D, BLOCK_N)
                v = tl.load(V + cols[:, None] * stride_vs + offs_d[None, :])  # (BLOCK_N, D)
            else:
                kT = tl.load(K + cols[None, :] * stride_ks + offs_d[:, None], mask=col_ok[None, :], other=0.0)
                v = tl.load(V + cols[:, None] * stride_vs + offs_d[None, :], mask=col_ok[:, None], other=0.0)
            s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
            if phase == 1:
                if HAS_MASK:
                    keep = tl.load(ALLOWED + frame_q[:, None] * FRAMES_K + (cols // TOKENS_PER_FRAME)[None, :],
                                   mask=row_ok[:, None] & col_ok[None, :], other=0) != 0
                else:
                    keep = row_ok[:, None] & col_ok[None, :]
                s = tl.where(keep, s, float("-inf"))
            if FROM_LSE:
                p = tl.math.exp2(s - lse2[:, None])  # (BLOCK_M, BLOCK_N), final: rows sum to 1
            else:
                m_new = tl.maximum(m_i, tl.max(s, 1))
                if phase == 1:
                    # A row with nothing allowed so far keeps m = -inf; shift by 0 to avoid inf - inf.
                    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
                else:
                    m_shift = m_new
                alpha = tl.math.exp2(m_i - m_shift)
                p = tl.math.exp2(s - m_shift[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
                m_i = m_new
            if JVP:
                if phase == 0:
                    tkT = tl.load(TK + cols[None, :] * stride_tks + offs_d[:, None])
                    tv = tl.load(TV + cols[:, None] * stride_tvs + offs_d[None, :])
                else:
                    tkT = tl.load(TK + cols[None, :] * stride_tks + offs_d[:, None], mask=col_ok[None, :], other=0.0)
                    tv = tl.load(TV + cols[:, None] * stride_tvs + offs_d[None, :], mask=col_ok[:, None], other=0.0)
                ts = tl.dot(q, tkT, input_precision=PRECISION)
                ts = tl.dot(tq, kT, ts, input_precision=PRECISION) * sm_scale  # tS in natural units
                pts = p * ts  # zero wherever p is (masked entries included)
                if FROM_LSE:
                    r_i += tl.sum(pts, 1)
                    acc_t = tl.dot(p.to(v.dtype), tv, acc_t, input_precision=PRECISION)
                else:
                    r_i = r_i * alpha + tl.sum(pts, 1)
                    acc_t = tl.dot(p.to(v.dtype), tv, acc_t * alpha[:, None], input_precision=PRECISION)
                acc_t = tl.dot(pts.to(v.dtype), v, acc_t, input_precision=PRECISION)

    if FROM_LSE:
        o = tl.load(O + out_rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        r = r_i
        to = acc_t - r[:, None] * o.to(tl.float32)
    else:
        empty_row = l_i == 0.0
        l_safe = tl.where(empty_row, 1.0, l_i)
        o = acc / l_safe[:, None]
        lse = tl.where(empty_row, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
        # Late on purpose: computed any earlier, it changes the (tuned) forward's generated code.
        out_rows = pid_bh.to(tl.int64) * SEQ_Q + offs_m
        tl.store(O + out_rows[:, None] * HEAD_DIM + offs_d[None, :], o.to(O.dtype.element_ty), mask=row_ok[:, None])
        tl.store(LSE + out_rows, lse, mask=row_ok)
        if JVP:
            r = r_i / l_safe
            to = acc_t / l_safe[:, None] - r[:, None] * o
    if JVP:
        tl.store(TO + out_rows[:, None] * HEAD_DIM + offs_d[None, :], to.to(TO.dtype.element_ty), mask=row_ok[:, None])
        tl.store(TLSE + out_rows, r, mask=row_ok)


@triton.jit(do_not_specialize=_SIZES_BY_K_TILE)
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,  # DO (B, H, Sq, D) contiguous; LSE, DELTA (B, H, Sq) fp32
    ALLOWED, FULL_NUM, FULL_IDX, PART_NUM, PART_IDX,  # transposed lists: rows are key tiles, entries query tiles
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    H, SEQ_Q, SEQ_K, TILES_Q, FRAMES_K, TOKENS_PER_FRAME, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = cols < SEQ_K
    frame_k = cols // TOKENS_PER_FRAME
    qk_scale = sm_scale * 1.4426950408889634

    k = tl.load(K + b * stride_kb + h * stride_kh + cols[:, None] * stride_ks + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)  # (BLOCK_N, D)
    v = tl.load(V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vs + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)
    Q += b * stride_qb + h * stride_qh
    row_base = pid_bh.to(tl.int64) * SEQ_Q
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    for phase in tl.static_range(2):
        if phase == 0:
            num_tiles = tl.load(FULL_NUM + pid_n)
            tile_idx = FULL_IDX + pid_n * TILES_Q
        else:
            num_tiles = tl.load(PART_NUM + pid_n)
            tile_idx = PART_IDX + pid_n * TILES_Q
        for it in range(num_tiles):
            rows = tl.load(tile_idx + it) * BLOCK_M + offs_m
            row_ok = rows < SEQ_Q
            if phase == 0:
                q = tl.load(Q + rows[:, None] * stride_qs + offs_d[None, :])  # (BLOCK_M, D)
                do = tl.load(DO + (row_base + rows)[:, None] * HEAD_DIM + offs_d[None, :])
                lse = tl.load(LSE + row_base + rows)
                delta = tl.load(DELTA + row_base + rows)
            else:
                q = tl.load(Q + rows[:, None] * stride_qs + offs_d[None, :], mask=row_ok[:, None], other=0.0)
                do = tl.load(DO + (row_base + rows)[:, None] * HEAD_DIM + offs_d[None, :],
                             mask=row_ok[:, None], other=0.0)
                lse = tl.load(LSE + row_base + rows, mask=row_ok, other=float("-inf"))
                delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
            # Rows with nothing allowed (LSE = -inf) and rows past the end get P = exp(S - inf) = 0.
            lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
            sT = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
            pT = tl.math.exp2(sT - lse2[None, :])
            if phase == 1:
                if HAS_MASK:
                    keep = tl.load(ALLOWED + (rows // TOKENS_PER_FRAME)[None, :] * FRAMES_K + frame_k[:, None],
                                   mask=row_ok[None, :] & col_ok[:, None], other=0) != 0
                    pT = tl.where(keep, pT, 0.0)
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PRECISION)
            dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dsT = pT * (dpT - delta[None, :])
            dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=PRECISION)

    out_rows = pid_bh.to(tl.int64) * SEQ_K + cols
    tl.store(DK + out_rows[:, None] * HEAD_DIM + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty),
             mask=col_ok[:, None])
    tl.store(DV + out_rows[:, None] * HEAD_DIM + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit(do_not_specialize=_SIZES_BY_Q_TILE)
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    ALLOWED, FULL_NUM, FULL_IDX, PART_NUM, PART_IDX,  # forward lists: rows are query tiles
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    H, SEQ_Q, SEQ_K, TILES_K, FRAMES_K, TOKENS_PER_FRAME, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < SEQ_Q
    frame_q = offs_m // TOKENS_PER_FRAME
    qk_scale = sm_scale * 1.4426950408889634

    rows = pid_bh.to(tl.int64) * SEQ_Q + offs_m
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + rows, mask=row_ok, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    for phase in tl.static_range(2):
        if phase == 0:
            num_tiles = tl.load(FULL_NUM + pid_m)
            tile_idx = FULL_IDX + pid_m * TILES_K
        else:
            num_tiles = tl.load(PART_NUM + pid_m)
            tile_idx = PART_IDX + pid_m * TILES_K
        for it in range(num_tiles):
            cols = tl.load(tile_idx + it) * BLOCK_N + offs_n
            col_ok = cols < SEQ_K
            if phase == 0:
                kT = tl.load(K + cols[None, :] * stride_ks + offs_d[:, None])
                vT = tl.load(V + cols[None, :] * stride_vs + offs_d[:, None])
            else:
                kT = tl.load(K + cols[None, :] * stride_ks + offs_d[:, None], mask=col_ok[None, :], other=0.0)
                vT = tl.load(V + cols[None, :] * stride_vs + offs_d[:, None], mask=col_ok[None, :], other=0.0)
            s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale
            p = tl.math.exp2(s - lse2[:, None])
            if phase == 1:
                if HAS_MASK:
                    keep = tl.load(ALLOWED + frame_q[:, None] * FRAMES_K + (cols // TOKENS_PER_FRAME)[None, :],
                                   mask=row_ok[:, None] & col_ok[None, :], other=0) != 0
                else:
                    keep = row_ok[:, None] & col_ok[None, :]
                p = tl.where(keep, p, 0.0)
            dp = tl.dot(do, vT, input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=PRECISION)

    tl.store(DQ + rows[:, None] * HEAD_DIM + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


# ------------------------------------------------------------------------ tile lists
class TileLists(NamedTuple):
    """Per row tile: FULL and PARTIAL column tiles, left-aligned (Mq,) counts and (Mq, Nk) indices."""

    full_num: torch.Tensor
    full_idx: torch.Tensor
    part_num: torch.Tensor
    part_idx: torch.Tensor


class KernelConfig(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


_TILE_CACHE: OrderedDict = OrderedDict()
_TILE_CACHE_SIZE = 64
_TILE_LOCK = threading.Lock()


def tile_lists(
    allowed: torch.Tensor | None,
    tokens_per_frame: int,
    seq_rows: int,
    seq_cols: int,
    block_rows: int,
    block_cols: int,
    device: torch.device,
    transpose: bool = False,
) -> TileLists:
    """Tile lists of a frame mask (rows = query tiles; with ``transpose``, rows = key tiles).

    The tile of a ragged last column (``seq_cols % block_cols != 0``) is demoted from FULL to
    PARTIAL so that the unmasked FULL path never reads past the end of the sequence.
    ``allowed=None`` means no mask. Cached; the cache holds the frame matrix, so its memory
    cannot be reused under a live key.
    """
    key = (
        None if allowed is None else (allowed.data_ptr(), allowed._version, tuple(allowed.shape), str(allowed.device)),
        tokens_per_frame, seq_rows, seq_cols, block_rows, block_cols, str(device), transpose,
    )
    with _TILE_LOCK:
        hit = _TILE_CACHE.get(key)
        if hit is not None:
            _TILE_CACHE.move_to_end(key)
            return hit[1]
    if allowed is None:
        rows, cols = triton.cdiv(seq_rows, block_rows), triton.cdiv(seq_cols, block_cols)
        kind = torch.full((rows, cols), FULL, dtype=torch.int8, device=device)
    else:
        frames = allowed.to(device=device, dtype=torch.bool)
        frames = frames.t().contiguous() if transpose else frames
        kind = BlockSparseMask(frames, tokens_per_frame).tiles(block_rows, block_cols).kind
    if seq_cols % block_cols:
        last = kind[:, -1]
        kind[:, -1] = torch.where(last == FULL, torch.full_like(last, PARTIAL), last)
    full_num, full_idx = left_aligned_indices(kind == FULL)
    part_num, part_idx = left_aligned_indices(kind == PARTIAL)
    lists = TileLists(full_num, full_idx.contiguous(), part_num, part_idx.contiguous())
    with _TILE_LOCK:
        _TILE_CACHE[key] = (allowed, lists)
        while len(_TILE_CACHE) > _TILE_CACHE_SIZE:
            _TILE_CACHE.popitem(last=False)
    return lists


_FRAMES_CACHE: OrderedDict = OrderedDict()


def _frames_int8(allowed: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The frame matrix as a contiguous int8 tensor on ``device`` (cached like the tile lists)."""
    key = (allowed.data_ptr(), allowed._version, tuple(allowed.shape), str(allowed.device), str(device))
    with _TILE_LOCK:
        hit = _FRAMES_CACHE.get(key)
        if hit is not None:
            return hit[1]
    frames = allowed.to(device=device, dtype=torch.int8).contiguous()
    with _TILE_LOCK:
        _FRAMES_CACHE[key] = (allowed, frames)
        while len(_FRAMES_CACHE) > _TILE_CACHE_SIZE:
            _FRAMES_CACHE.popitem(last=False)
    return frames


# --------------------------------------------------------------------------- configs
# Tile sizes chosen per kernel and head dim (tuned on one H100, bf16; see benchmarks/).
# The interpreter uses small unequal tiles so that tests exercise every tile kind and
# catch any mix-up of the two tile sizes.
_CUDA_CONFIGS = {
    # kernel: {padded head dim: KernelConfig}; D = 128 measured (tune sweep, H100, bf16,
    # teacher forcing at S = 65520 and full attention at S = 32760), the others scaled from it.
    "fwd": {16: KernelConfig(128, 64, 4, 3), 32: KernelConfig(128, 64, 4, 3), 64: KernelConfig(128, 64, 4, 3),
            128: KernelConfig(128, 128, 8, 3), 256: KernelConfig(64, 32, 8, 2)},
    "jvp": {16: KernelConfig(64, 64, 4, 2), 32: KernelConfig(64, 64, 4, 2), 64: KernelConfig(128, 64, 8, 2),
            128: KernelConfig(128, 64, 8, 2), 256: KernelConfig(32, 32, 4, 1)},
    # The tangents-only JVP (FROM_LSE) starts from the fused JVP's tiles: not tuned separately.
    "jvp_tangents": {16: KernelConfig(64, 64, 4, 2), 32: KernelConfig(64, 64, 4, 2),
                     64: KernelConfig(128, 64, 8, 2), 128: KernelConfig(128, 64, 8, 2), 256: KernelConfig(32, 32, 4, 1)},
    "bwd_dkdv": {16: KernelConfig(64, 64, 4, 2), 32: KernelConfig(64, 64, 4, 2), 64: KernelConfig(64, 64, 4, 2),
                 128: KernelConfig(64, 64, 4, 2), 256: KernelConfig(32, 32, 4, 1)},
    "bwd_dq": {16: KernelConfig(64, 64, 4, 2), 32: KernelConfig(64, 64, 4, 2), 64: KernelConfig(128, 64, 8, 2),
               128: KernelConfig(128, 64, 8, 2), 256: KernelConfig(32, 32, 4, 1)},
}
_INTERPRET_CONFIG = KernelConfig(16, 32, 4, 1)
_OVERRIDES: dict[str, KernelConfig] = {}


def _config(kernel: str, head_dim: int, x: torch.Tensor) -> KernelConfig:
    """Tiles for ``kernel`` at padded ``head_dim`` for inputs like ``x``.

    The table is sized for 2-byte inputs; fp32 tiles take twice the shared memory, so they get
    the tiles of twice the head dim (fp32 at D = 128 with the bf16 JVP tiles needs 320 KB of
    shared memory, over an H100's or H200's 227 KB).
    """
    if kernel in _OVERRIDES:
        return _OVERRIDES[kernel]
    if x.device.type != "cuda":
        return _INTERPRET_CONFIG
    width = min(256, head_dim * x.element_size() // 2)
    return _CUDA_CONFIGS[kernel][max(16, width)]


def set_config(kernel: str, config: KernelConfig | None) -> None:
    """Override the tile config of one kernel ("fwd", "jvp", "jvp_tangents", "bwd_dkdv", "bwd_dq"); None resets."""
    if kernel not in _CUDA_CONFIGS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(_CUDA_CONFIGS)}")
    if config is None:
        _OVERRIDES.pop(kernel, None)
    else:
        _OVERRIDES[kernel] = KernelConfig(*config)


# -------------------------------------------------------------------------- wrappers
def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            "the Triton attention kernels need a CUDA tensor, or TRITON_INTERPRET=1 (set before importing "
            "triton) to run them on the CPU interpreter"
        )
    if x.device.type != "cuda" and not all(isinstance(f, InterpretedFunction) for f in (tl.zeros, _attn_fwd_kernel)):
        # triton.jit reads TRITON_INTERPRET when it decorates; Triton's own library (tl.zeros, ...)
        # is decorated when triton is first imported, ours when this module is.
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton (or causal_rcm.kernels.flash) was imported, so the "
            "kernels were compiled for the GPU; set it before anything imports triton"
        )


def _padded_dim(d: int) -> int:
    if d > 256:
        raise ValueError(f"head dim {d} > 256 is not supported by the Triton attention kernels")
    return max(16, 1 << (d - 1).bit_length())


def _prep(x: torch.Tensor, d_pad: int) -> torch.Tensor:
    """Unit last stride and head dim zero-padded to ``d_pad`` (zeros change no score or output)."""
    if x.shape[-1] != d_pad:
        return torch.nn.functional.pad(x, (0, d_pad - x.shape[-1]))
    return x if x.stride(-1) == 1 else x.contiguous()


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _mask_args(allowed, tokens_per_frame, device):
    if allowed is None:
        return None, 1, 1
    return _frames_int8(allowed, device), tokens_per_frame, allowed.shape[1]


def _unpad(x: torch.Tensor, d: int) -> torch.Tensor:
    return x if x.shape[-1] == d else x[..., :d].contiguous()


def _launch_fwd(q, k, v, allowed, tokens_per_frame, scale, tangents, saved):
    """One launch of ``_attn_fwd_kernel``: the forward; with ``tangents`` the fused JVP; with
    ``saved`` = (O, LSE) as well, the tangents only. Returns (O, LSE, tO, tLSE), O and tO
    head-dim padded (without tangents tO, tLSE are O, LSE)."""
    _check_device(q)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    d_pad = _padded_dim(D)
    q, k, v = (_prep(x, d_pad) for x in (q, k, v))
    jvp = tangents is not None
    tq, tk, tv = (_prep(x.to(q.dtype), d_pad) for x in tangents) if jvp else (q, k, v)
    cfg = _config("fwd" if not jvp else "jvp" if saved is None else "jvp_tangents", d_pad, q)
    frames, tpf, frames_k = _mask_args(allowed, tokens_per_frame, q.device)
    lists = tile_lists(allowed, tokens_per_frame, Sq, Sk, cfg.block_m, cfg.block_n, q.device)
    if saved is None:
        o = torch.empty(B, H, Sq, d_pad, device=q.device, dtype=q.dtype)
        lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32)
    else:
        o = _prep(saved[0].to(q.dtype), d_pad).contiguous()
        lse = saved[1].float().contiguous()
    to = torch.empty_like(o) if jvp else o
    tlse = torch.empty_like(lse) if jvp else lse
    grid = (triton.cdiv(Sq, cfg.block_m), B * H)
    _attn_fwd_kernel[grid](
        q, k, v, tq, tk, tv, o, lse, to, tlse,
        frames if frames is not None else lists.full_num, *lists,
        *_strides(q), *_strides(k), *_strides(v), *_strides(tq), *_strides(tk), *_strides(tv),
        H, Sq, Sk, lists.full_idx.shape[1], frames_k, tpf, scale,
        HEAD_DIM=d_pad, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        HAS_MASK=allowed is not None, JVP=jvp, FROM_LSE=saved is not None, PRECISION=_precision(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return o, lse, to, tlse


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor | None,
    tokens_per_frame: int,
    scale: float,
    tangents: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Masked attention forward, and with ``tangents`` its JVP in the same pass.

    Args:
        q: (B, H, Sq, D); k, v: (B, H, Sk, D), one dtype (fp32, bf16 or fp16).
        allowed: (Fq, Fk) bool frame matrix with Fq * tpf == Sq, Fk * tpf == Sk, or None.
        tokens_per_frame: tokens per frame of ``allowed``.
        scale: softmax scale.
        tangents: (tQ, tK, tV) of the shapes of (q, k, v), or None.
    Returns:
        (O, LSE) or, with tangents, (O, LSE, tO, tLSE): O, tO (B, H, Sq, D) in q's dtype;
        LSE, tLSE (B, H, Sq) fp32 with LSE = logsumexp_j(S_ij) (-inf on empty rows) and
        tLSE = rowsum(P * tS).
    """
    o, lse, to, tlse = _launch_fwd(q, k, v, allowed, tokens_per_frame, scale, tangents, None)
    d = q.shape[-1]
    return (_unpad(o, d), lse, _unpad(to, d), tlse) if tangents is not None else (_unpad(o, d), lse)


def jvp_tangents(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    tangents: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    allowed: torch.Tensor | None,
    tokens_per_frame: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tO, tLSE): the JVP of :func:`forward` along ``tangents``, given its outputs (O, LSE).

    One pass with P = exp(S - LSE) exactly (no online softmax): acc_t = P tV + (P * tS) V,
    r = rowsum(P * tS); tO = acc_t - r O, tLSE = r. Arguments as in :func:`forward`;
    ``o`` (B, H, Sq, D) and ``lse`` (B, H, Sq) are its outputs for the same (q, k, v, mask).
    """
    _, _, to, tlse = _launch_fwd(q, k, v, allowed, tokens_per_frame, scale, tangents, (o, lse))
    return _unpad(to, q.shape[-1]), tlse


def backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    allowed: torch.Tensor | None,
    tokens_per_frame: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dQ, dK, dV) of L(O, LSE) given dO (B, H, Sq, D) and dLSE (B, H, Sq) or None.

    ``o`` and ``lse`` are the outputs of :func:`forward` for the same inputs.
    """
    _check_device(q)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    d_pad = _padded_dim(D)
    delta = (do.float() * o.float()).sum(-1)  # (B, H, Sq)
    if dlse is not None:
        delta = delta - dlse.float()
    q, k, v = (_prep(x, d_pad) for x in (q, k, v))
    do = _prep(do.to(q.dtype), d_pad).contiguous()
    lse = lse.contiguous()
    delta = delta.contiguous()
    frames, tpf, frames_k = _mask_args(allowed, tokens_per_frame, q.device)
    precision = _precision(q.dtype)
    dq = torch.empty(B, H, Sq, d_pad, device=q.device, dtype=q.dtype)
    dk = torch.empty(B, H, Sk, d_pad, device=q.device, dtype=q.dtype)
    dv = torch.empty_like(dk)

    cfg = _config("bwd_dkdv", d_pad, q)
    lists = tile_lists(allowed, tokens_per_frame, Sk, Sq, cfg.block_n, cfg.block_m, q.device, transpose=True)
    _attn_bwd_dkdv_kernel[(triton.cdiv(Sk, cfg.block_n), B * H)](
        q, k, v, do, lse, delta, dk, dv,
        frames if frames is not None else lists.full_num, *lists,
        *_strides(q), *_strides(k), *_strides(v),
        H, Sq, Sk, lists.full_idx.shape[1], frames_k, tpf, scale,
        HEAD_DIM=d_pad, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HAS_MASK=allowed is not None,
        PRECISION=precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    cfg = _config("bwd_dq", d_pad, q)
    lists = tile_lists(allowed, tokens_per_frame, Sq, Sk, cfg.block_m, cfg.block_n, q.device)
    _attn_bwd_dq_kernel[(triton.cdiv(Sq, cfg.block_m), B * H)](
        q, k, v, do, lse, delta, dq,
        frames if frames is not None else lists.full_num, *lists,
        *_strides(q), *_strides(k), *_strides(v),
        H, Sq, Sk, lists.full_idx.shape[1], frames_k, tpf, scale,
        HEAD_DIM=d_pad, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HAS_MASK=allowed is not None,
        PRECISION=precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return _unpad(dq, D), _unpad(dk, D), _unpad(dv, D)
