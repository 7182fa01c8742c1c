"""One training run: a data source and a recipe from the registry, handed to the trainer."""

from __future__ import annotations

import dataclasses

import torch.distributed

from causal_rcm.config import Config, validate
from causal_rcm.data.shards import Manifest
from causal_rcm.data.source import SOURCES, make_source
from causal_rcm.distill import RECIPES
from causal_rcm.errors import UserError
from causal_rcm.models.adapters import load_checkpoint
from causal_rcm.train.parallel import DistEnv, init_dist, shutdown
from causal_rcm.train.trainer import Trainer

__all__ = ["recorded_actions", "train_one"]


def recorded_actions(config: Config) -> int:
    """The number of actions of the environment that recorded ``data.shards`` (0 for a rendered world, and for the
    no-action baseline, ``data.actions=false``)."""
    data = config.data
    return Manifest.read(data.shards).env.num_actions if data.source == "atari" and data.shards and data.actions else 0


def train_one(config: Config, restart: bool = False, *, dist: DistEnv | None = None) -> dict:
    """Train ``config.recipe`` (a single recipe) on its data source; under torchrun every process calls this.

    ``dist`` (from :func:`~causal_rcm.train.parallel.init_dist`) reuses a process group that the caller owns
    and leaves it up (a staged run trains several runs in one group); by default the group is joined here
    and left at the end.
    """
    if config.recipe not in RECIPES:
        raise UserError(f"recipe {config.recipe!r} is not a single recipe; choose from {', '.join(RECIPES)}")
    validate(config)  # a config built in code gets the checks of a loaded one: every field's type and range
    if config.data.source not in SOURCES:
        raise UserError(f"data.source={config.data.source!r} is not a data source; choose from {', '.join(SOURCES)}")
    cls = RECIPES[config.recipe].recipe
    if config.train.init:
        config.model = load_checkpoint(config.train.init)[0]  # the student takes the checkpoint's architecture
    num_actions = recorded_actions(config)
    if num_actions and not config.model.num_actions and not config.train.init:  # a new world model: the env's actions
        config.model = dataclasses.replace(config.model, num_actions=num_actions)
    if config.data.source == "atari" and not config.data.actions and config.model.num_actions:
        raise UserError(f"data.actions=false trains a model without actions, but the model takes {config.model.num_actions}: "
                        "train it from scratch (no train.init of a world model, model.num_actions=0)")
    cls.prepare(config)
    if num_actions and config.model.num_actions != num_actions:
        raise UserError(
            f"the model takes {config.model.num_actions} actions but {config.data.shards} records {num_actions}: "
            "train on shards of the game its teacher or train.init was trained on"
        )
    owns_dist = dist is None
    dist = dist or init_dist(config.train.device)
    source = None
    try:
        local_batch = config.train.batch_size // dist.size
        source = make_source(config.data, config.model.text_dim, rank=dist.rank, world_size=dist.size, local_batch=local_batch, device=dist.device)
        if config.train.eval_videos:
            source.eval_set(1)  # a source without evaluation data fails now, not after training
        return Trainer(config, cls(config, source), source, dist=dist).fit(restart=restart)
    finally:
        if source is not None:
            source.close()
        if owns_dist:
            shutdown(dist)
        elif dist.distributed:  # the next run may read what the main process just exported
            torch.distributed.barrier()
