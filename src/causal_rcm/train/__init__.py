"""Training: the recipe-agnostic trainer and the entry point used by the CLI."""

from __future__ import annotations

from ..config import Config
from .trainer import Recipe, Trainer

__all__ = ["Recipe", "Trainer", "train"]


def train(config: Config, restart: bool = False, *, world=None) -> dict:
    """Run ``config.recipe`` on its data world; under torchrun every process calls this.

    ``world`` (from :func:`~.parallel.init_world`) reuses a process group that the caller owns
    and leaves it up (staged recipes train several runs in one group); by default the group is
    joined here and left at the end.
    """
    from ..data.embedded import ShapesWorld
    from ..distill import build_recipe, recipe_class
    from ..errors import UserError
    from .parallel import init_world, shutdown

    cls = recipe_class(config.recipe)
    if getattr(cls, "staged", False):  # a recipe of several training runs (causal-rcm)
        return cls.run(config, restart=restart)
    if config.data.world != "shapes":
        raise UserError(f"data.world={config.data.world!r} is not available yet; use 'shapes'")
    if config.train.init:
        from ..models.adapters import load_checkpoint

        config.model = load_checkpoint(config.train.init)[0]  # the student takes the checkpoint's architecture
    cls.prepare(config)
    owns_world = world is None
    world = world or init_world(config.train.device)
    data = None
    try:
        local_batch = config.train.batch_size // world.size
        data = ShapesWorld(config.data, config.model.text_dim, rank=world.rank, world_size=world.size, local_batch=local_batch, device=world.device)
        recipe = build_recipe(config, data)
        return Trainer(config, recipe, data, world=world).fit(restart=restart)
    finally:
        if data is not None:
            data.close()
        if owns_world:
            shutdown(world)
        elif world.distributed:  # the next run may read what the main process just exported
            import torch.distributed as dist

            dist.barrier()
