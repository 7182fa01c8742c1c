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


# ------------------------------------------------------------------ given frames: images and clips in
def _encoded(image: np.ndarray, fmt: str, **kw) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP", "JPEG"])
def test_read_image_takes_each_type_by_its_bytes(fmt):
    from causal_rcm.data.video import image_type, read_image

    image = np.zeros((12, 20, 3), dtype=np.uint8)
    image[3:9, 5:15] = (230, 40, 40)
    data = _encoded(image, fmt, **{"WEBP": {"lossless": True}, "JPEG": {"quality": 95, "subsampling": 0}}.get(fmt, {}))
    assert image_type(data) == {"WEBP": "WebP"}.get(fmt, fmt)
    got = read_image(data)
    assert got.shape == (12, 20, 3) and got.dtype == np.uint8
    error = np.abs(got.astype(int) - image.astype(int))
    assert error.mean() < 4 if fmt == "JPEG" else error.max() == 0  # JPEG rings at sharp edges


def test_read_image_refuses_what_is_not_an_image_before_decoding():
    from causal_rcm.data.video import read_image
    from causal_rcm.limits import MAX_IMAGE_BYTES, MAX_IMAGE_SIDE

    with pytest.raises(UserError, match="upload is not an image: give a PNG, JPEG, GIF, WebP or BMP file"):
        read_image(b"%PDF-1.7 not a picture", what="upload")
    with pytest.raises(UserError, match="over the 16 MiB limit"):
        read_image(b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BYTES))
    wide = _encoded(np.zeros((1, MAX_IMAGE_SIDE + 1, 3), dtype=np.uint8), "PNG")  # small file, too many pixels
    with pytest.raises(UserError, match=f"is {MAX_IMAGE_SIDE + 1}x1 px; an image may be at most {MAX_IMAGE_SIDE} px a side"):
        read_image(wide)
    with pytest.raises(UserError, match="cannot be read as an image"):
        read_image(b"\x89PNG\r\n\x1a\n" + b"truncated" * 10)


def test_fit_frames_crops_the_centre_to_the_aspect_and_resizes():
    from causal_rcm.data.video import fit_frames

    frames = np.zeros((2, 40, 80, 3), dtype=np.uint8)
    frames[:, :, 20:60] = 200  # the centre square
    said = []
    out = fit_frames(frames, 20, 20, warn=said.append)
    assert out.shape == (2, 20, 20, 3) and (out == 200).all()  # only the centre is left, averaged 2x2
    assert len(said) == 1 and "80x40 px, another aspect ratio than the model's 20x20" in said[0]
    same = fit_frames(frames, 20, 40, warn=said.append)  # the same aspect: no crop, no warning
    assert same.shape == (2, 20, 40, 3) and len(said) == 1
    assert fit_frames(frames, 40, 80) is frames  # its size already: as it is
    up = fit_frames(frames[:, :4, :4], 8, 8)
    assert up.shape == (2, 8, 8, 3)
