"""Why a shapes-world teacher misses motion direction: three probes of a bidirectional checkpoint, on the CPU.

    python scripts/probe_direction.py checkpoints/shapes/teacher/model [SAMPLES]

1. Per-frame centroid (x, px) of the red mass in the teacher's x0 prediction from pure noise (s = 1) and at
   s = 0.9, for "a red circle moves left" against "... right" on the same 32 noise draws (the optimal
   denoiser drifts about -1.5 / +1.5 px a frame: the mean video of each caption), and the centroid's drift
   (x and y, px a frame, a line fitted over the frames) at s = 1 for each of the four direction words.
2. Equivariance errors at s = 0.7 on random inputs: max |f(P x) - P f(x)| for a reversal of the 8 frames,
   for a fixed shuffle of them, and for a horizontal flip (P acts on the rendered frames: decoded, mapped and
   encoded again, so that it is exact for a codec that packs several frames or pixels into one latent). A model blind to the order of time would be
   equivariant to both frame maps; one that tells earlier from later frames only weakly has a reversal error
   well below its shuffle error.
3. Sampled videos (the checkpoint's own sampler) for "a red circle moves left" against "... right", and for
   "up" against "down", on the same noise draws: the direction the oracle detects in each. A model that reads
   a direction word's sign moves the circle opposite ways for the two words; one that reads only its axis
   makes the same motion for both, its sign set by the noise.
"""

import sys

import torch

from causal_rcm.eval.score import load_for_eval, sample_videos


def main(path: str, samples: int = 16) -> None:
    model, world, spec = load_for_eval(path, device="cpu")
    C, F, h = model.config.in_dim, world.data.num_frames, world.data.resolution // world.data.codec_factor
    rendered = F * world.codec.temporal_factor  # frames of a decoded video

    def on_pixels(x: torch.Tensor, fn) -> torch.Tensor:
        """A map of the rendered video carried to latents (the pixel codec's shift is one number: this permutes
        latent entries, and is linear)."""
        return world.codec.encode(fn(world.codec.decode(x)))

    n = 32

    def centroids(word: str, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame centroid (x, y) of the red mass in the x0 prediction, averaged over the n draws."""
        context = world.encode_text([f"a red circle moves {word}"] * n)
        eps = torch.randn((n, C, F, h, h), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            v = model(s * eps, torch.full((n, F), 1000 * s), context).float()
        pixels = world.codec.decode(s * eps - s * v)  # x0 = x_s - s v
        red = (pixels[:, 0] - 0.5 * (pixels[:, 1] + pixels[:, 2])).clamp(min=0).mean(0)  # (F, H, W)
        coords = torch.arange(red.shape[-1]).float()
        mass = red.sum((1, 2))
        return (red.sum(1) * coords).sum(-1) / mass, (red.sum(2) * coords).sum(-1) / mass

    for s in (1.0, 0.9):
        for word in ("left", "right"):
            cx, _ = centroids(word, s)
            print(f"s={s} {word:5s} centroid x per frame: " + " ".join(f"{c:5.2f}" for c in cx.tolist()))
    frames = torch.arange(rendered).float() - (rendered - 1) / 2
    for word in ("left", "right", "up", "down"):
        cx, cy = centroids(word, 1.0)
        slope = [float((frames * c).sum() / frames.square().sum()) for c in (cx, cy)]
        print(f"s=1.0 {word:5s} drift x {slope[0]:+.3f}, y {slope[1]:+.3f} px/frame")
    context = world.encode_text(["a red circle moves left"] * 2)
    x = torch.randn((2, C, F, h, h), generator=torch.Generator().manual_seed(2))
    t = torch.full((2, F), 700.0)
    shuffle = torch.randperm(rendered, generator=torch.Generator().manual_seed(3))
    maps = {"reversal": lambda v: v.flip(2), "shuffle": lambda v: v[:, :, shuffle], "h-flip": lambda v: v.flip(-1)}
    with torch.no_grad():
        y = model(x, t, context)
        errors = {
            name: (model(on_pixels(x, fn), t, context) - on_pixels(y, fn)).abs().max().item() for name, fn in maps.items()
        }
    print(f"equivariance error (output mean |v| {y.abs().mean().item():.3f}): "
          + ", ".join(f"{k} {v:.3f}" for k, v in errors.items()))
    for pair in (("left", "right"), ("up", "down")):
        detected = []
        for word in pair:
            captions = [f"a red circle moves {word}"] * samples
            report = world.oracle.evaluate(sample_videos(model, world, captions, spec, seed=0), captions)
            detected.append([next((o.direction for o in v.detected if o.colour == "red"), None) for v in report.videos])
        same = sum(a is not None and a == b for a, b in zip(*detected))
        follows = [sum(d == word for d in found) for word, found in zip(pair, detected)]
        print(f"samples, {pair[0]} / {pair[1]} on the same {samples} draws: follows the word {follows[0]} / {follows[1]}, "
              f"the same motion for both on {same}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/shapes/teacher/model", *(int(a) for a in sys.argv[2:3]))
