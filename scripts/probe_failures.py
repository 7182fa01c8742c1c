"""Which held-out prompts shapes-world models fail: caption adherence per kind of prompt, on the CPU.

    python scripts/probe_failures.py N MODEL [MODEL...]

Samples N held-out prompts (the oracle's eval set, seed 0, each checkpoint's own sampler) with every model and
prints caption adherence grouped by what the prompt asks for: the number of objects, each shape, each colour and
each direction word, with the prompt count of each group. Models that lose caption adherence on the
same groups share a failure; a distilled student that fails groups its teacher passes has lost what it did not
learn from it.
"""

import sys
from collections import defaultdict

from causal_rcm.eval.score import load_for_eval, sample_videos


def groups(scene) -> list[str]:
    """The groups a prompt belongs to, from its scene's caption objects."""
    objects = scene.objects
    names = [f"{len(objects)} object(s)"]
    for obj in objects:
        names += [f"shape {obj.kind}", f"colour {obj.colour}", f"direction {obj.direction}"]
    return sorted(set(names))


def main(n: int, paths: list[str]) -> None:
    table: dict[str, dict[str, list[float]]] = {}
    for path in paths:
        model, world, spec = load_for_eval(path, device="cpu")
        ref = world.eval_set(n)
        videos = sample_videos(model, world, ref["caption"], spec, seed=0)
        report = world.oracle.evaluate(videos, ref["scene"])
        scores: dict[str, list[float]] = defaultdict(list)
        for scene, video in zip(ref["scene"], report.videos):
            for name in ["all", *groups(scene)]:
                scores[name].append(video.metrics["caption_adherence"])
        table[path] = scores
    names = sorted({name for scores in table.values() for name in scores}, key=lambda k: (k != "all", k))
    print("| group | prompts | " + " | ".join(paths) + " |")
    print("|---|---|" + "---|" * len(paths))
    for name in names:
        count = len(next(iter(table.values()))[name])
        cells = [f"{sum(s[name]) / len(s[name]):.3f}" if s[name] else "-" for s in table.values()]
        print(f"| {name} | {count} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(int(sys.argv[1]), sys.argv[2:])
