"""One training run: a data source and a recipe from the registry, handed to the trainer."""

from __future__ import annotations

import torch.distributed

from causal_rcm.config import Config
from causal_rcm.data.source import ShapesSource
from causal_rcm.distill import RECIPES
from causal_rcm.errors import UserError
from causal_rcm.models.adapters import load_checkpoint
from causal_rcm.train.parallel import DistEnv, init_dist, shutdown
from causal_rcm.train.trainer import Trainer

__all__ = ["train_one"]


def train_one(config: Config, restart: bool = False, *, dist: DistEnv | None = None) -> dict:
    """Train ``config.recipe`` (a single recipe) on its data source; under torchrun every process calls this.

    ``dist`` (from :func:`~causal_rcm.train.parallel.init_dist`) reuses a process group that the caller owns
    and leaves it up (a staged run trains several runs in one group); by default the group is joined here
    and left at the end.
    """
    if config.recipe not in RECIPES:
        raise UserError(f"recipe {config.recipe!r} is not a single recipe; choose from {', '.join(RECIPES)}")
    if config.data.source != "shapes":
        raise UserError(f"data.source={config.data.source!r} is not available yet; use 'shapes'")
    cls = RECIPES[config.recipe].recipe
    if config.train.init:
        config.model = load_checkpoint(config.train.init)[0]  # the student takes the checkpoint's architecture
    cls.prepare(config)
    owns_dist = dist is None
    dist = dist or init_dist(config.train.device)
    source = None
    try:
        local_batch = config.train.batch_size // dist.size
        source = ShapesSource(config.data, config.model.text_dim, rank=dist.rank, world_size=dist.size, local_batch=local_batch, device=dist.device)
        return Trainer(config, cls(config, source), source, dist=dist).fit(restart=restart)
    finally:
        if source is not None:
            source.close()
        if owns_dist:
            shutdown(dist)
        elif dist.distributed:  # the next run may read what the main process just exported
            torch.distributed.barrier()
