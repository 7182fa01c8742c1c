import numpy as np
import pytest
import torch

from causal_rcm.data.shapes import ShapesConfig, ShapesDataset
from causal_rcm.data.video import from_uint8, grid, to_uint8, upscale, write_gif, write_mp4
from causal_rcm.errors import UserError


@pytest.fixture(scope="module")
def frames():
    return to_uint8(ShapesDataset(ShapesConfig(num_frames=6), seed=0).batch(2)["video"])  # (2, F, H, W, 3)


def test_uint8_round_trip():
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, (2, 3, 5, 4, 3), dtype=np.uint8)
    video = from_uint8(pix)
    assert video.shape == (2, 3, 3, 5, 4) and video.min() >= -1 and video.max() <= 1
    assert np.array_equal(to_uint8(video), pix)
    assert torch.equal(from_uint8(pix[0]), video[0])
    assert (to_uint8(torch.full((3, 1, 1, 1), 7.0)) == 255).all()  # clipped
    with pytest.raises(UserError):
        from_uint8(pix.astype(np.float32))


def test_grid_layout(frames):
    short = frames[1][:3]
    g = grid([frames[0], short], pad=2, pad_value=50)
    assert g.shape == (6, 36, 70, 3)
    assert np.array_equal(g[:, 2:34, 2:34], frames[0])
    assert np.array_equal(g[5, 2:34, 36:68], short[-1])  # the shorter video holds its last frame
    assert (g[:, :2] == 50).all() and (g[:, :, 34:36] == 50).all()
    assert grid([frames[0]] * 3, columns=2).shape == (6, 2 * 34 + 2, 2 * 34 + 2, 3)


def test_gif_is_lossless(tmp_path, frames):
    from PIL import Image, ImageSequence

    path = write_gif(tmp_path / "a" / "v.gif", frames[0], fps=10, scale=2)
    with Image.open(path) as im:
        got = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    assert np.array_equal(got, upscale(frames[0], 2))


def test_mp4_decodes_close(tmp_path, frames):
    av = pytest.importorskip("av")
    path = write_mp4(tmp_path / "v.mp4", frames[0], fps=8, scale=4)
    with av.open(str(path)) as c:
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert got.shape == (6, 128, 128, 3)
    assert np.abs(got.astype(int) - upscale(frames[0], 4)).mean() < 3.0
    odd = write_mp4(tmp_path / "odd.mp4", frames[0][:, :31, :31], fps=8)
    with av.open(str(odd)) as c:
        assert next(c.decode(video=0)).width == 32
