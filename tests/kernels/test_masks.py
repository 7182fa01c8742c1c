import pytest
import torch

from causal_rcm.kernels import masks as M
from causal_rcm.kernels.dispatch import attention


def all_kinds(tpf=5):
    return [
        M.bidirectional(3, 2, tpf),
        M.block_causal(4, 1, tpf),
        M.block_causal(3, 2, tpf),
        M.teacher_forcing(3, 2, tpf),
        M.block_causal(6, 1, tpf) & M.sliding_window(6, 1, tpf, window_frames=3, sink_frames=1),
        M.block_causal(3, 2, tpf) & M.sliding_window(3, 2, tpf, window_frames=4, sink_frames=0),
    ]


@pytest.mark.parametrize("mask", all_kinds(tpf=7), ids=lambda m: m.kind)
@pytest.mark.parametrize("blocks", [(16, 16), (8, 32), (5, 3), (64, 64)])
def test_tiles_classify_every_tile_like_the_dense_view(mask, blocks):
    bm, bn = blocks
    dense = mask.dense()
    table = mask.tiles(bm, bn)
    assert table.kind.shape == (-(-mask.seq_len_q // bm), -(-mask.seq_len_k // bn))
    for i in range(table.kind.shape[0]):
        for j in range(table.kind.shape[1]):
            tile = dense[i * bm : (i + 1) * bm, j * bn : (j + 1) * bn]
            expected = M.FULL if tile.all() else (M.EMPTY if not tile.any() else M.PARTIAL)
            assert table.kind[i, j] == expected, (i, j)
    # index lists agree with the kind table
    for i in range(table.kind.shape[0]):
        partial = table.kv_indices[i, : table.kv_num_blocks[i]].tolist()
        full = table.full_kv_indices[i, : table.full_kv_num_blocks[i]].tolist()
        assert partial == torch.nonzero(table.kind[i] == M.PARTIAL).flatten().tolist()
        assert full == torch.nonzero(table.kind[i] == M.FULL).flatten().tolist()


def test_teacher_forcing_semantics_and_positions():
    n, f = 3, 2
    mask = M.teacher_forcing(n, f, 1)
    a = mask.allowed
    frames = n * f
    chunk = lambda i: (i % frames) // f  # noqa: E731
    for q in range(2 * frames):
        for k in range(2 * frames):
            q_clean, k_clean = q < frames, k < frames
            if q_clean:
                expected = k_clean and chunk(k) <= chunk(q)
            else:
                expected = (k_clean and chunk(k) < chunk(q)) or (not k_clean and chunk(k) == chunk(q))
            assert bool(a[q, k]) == expected, (q, k)
    assert mask.positions().tolist() == list(range(frames)) * 2


def test_block_causal_and_sliding_window():
    mask = M.block_causal(6, 1, 1) & M.sliding_window(6, 1, 1, window_frames=3, sink_frames=1)
    a = mask.allowed
    assert a[5].tolist() == [True, False, False, True, True, True]  # sink + last 3 frames incl. itself
    assert a[2].tolist() == [True, True, True, False, False, False]
    chunked = M.block_causal(3, 2, 1) & M.sliding_window(3, 2, 1, window_frames=4)
    assert chunked.allowed[4].tolist() == [False, False, True, True, True, True]  # chunk 2 sees chunks 1, 2
    with pytest.raises(ValueError, match="cover one chunk"):
        M.sliding_window(3, 2, 1, window_frames=1)


def test_large_masks_stay_block_sparse():
    mask = M.teacher_forcing(7, 3, 1560)  # Wan2.1-1.3B: 21 latent frames, S = 65520
    assert mask.seq_len_q == 65520
    assert mask.allowed.shape == (42, 42)
    with pytest.raises(ValueError, match="refusing to build a dense"):
        mask.dense()
    table = mask.tiles(128, 128)
    density = table.kind.ne(M.EMPTY).float().mean().item()
    assert abs(mask.density() - 0.286) < 0.01
    assert density < 0.35  # empty tiles are the majority and would be skipped


@pytest.mark.parametrize("mask", all_kinds(tpf=40), ids=lambda m: m.kind)
def test_flex_block_mask_matches_math_attention(mask):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, mask.seq_len_q, 16).unbind(0)
    with torch.no_grad():
        ref = attention(q, k, v, mask, backend="math")
        out = attention(q, k, v, mask, backend="flex")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
