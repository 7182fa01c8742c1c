"""Runs made of runs, on top of the recipes and the trainer: training a named recipe (single or staged),
the quickstart and the experiments. The one place that composes data sources, recipes and the trainer.

:func:`load_config` builds a run's config from a recipe's defaults, a ``--config`` file and overrides;
:func:`train` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from causal_rcm.config import SECTIONS, Config, apply_file, apply_overrides, validate
from causal_rcm.distill import RECIPES
from causal_rcm.errors import UserError
from causal_rcm.runs.single import train_one
from causal_rcm.runs.staged import CausalRCMRun, causal_rcm_config
from causal_rcm.train.parallel import DistEnv

__all__ = ["load_config", "overrides_for", "recipe_config", "recipe_names", "train"]

STAGED = {CausalRCMRun.name: (CausalRCMRun, causal_rcm_config)}


def recipe_names() -> list[str]:
    """Every name ``causal-rcm train`` takes: the single recipes and the staged runs."""
    return [*RECIPES, *STAGED]


def recipe_config(name: str) -> Config:
    """The defaults of recipe ``name``; UserError for an unknown name."""
    if name in RECIPES:
        return RECIPES[name].defaults()
    if name in STAGED:
        return STAGED[name][1]()
    raise UserError(f"unknown recipe {name!r}; choose from {', '.join(recipe_names())}")


def overrides_for(recipes: Sequence[str], overrides: Sequence[str]) -> dict[str, list[str]]:
    """Share ``overrides`` among runs of several recipes: each recipe gets those of its own sections (an
    ``ode.*`` key reaches ode-init, not tf-scm). UserError names an override that no recipe has a section for."""
    own = {recipe: {name for name in SECTIONS if getattr(recipe_config(recipe), name) is not None} for recipe in recipes}
    shared: dict[str, list[str]] = {recipe: [] for recipe in recipes}
    for item in overrides:
        section = item.partition("=")[0].strip().split(".")[0]
        takers = [recipe for recipe in recipes if section not in SECTIONS or section in own[recipe]]
        if not takers:
            raise UserError(f"override {item.partition('=')[0].strip()} applies to none of {', '.join(recipes)}")
        for recipe in takers:
            shared[recipe].append(item)
    return shared


def load_config(recipe: str, config_file: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The named recipe's defaults, updated by a JSON file (resolved configs and ``configs/`` files work) and overrides,
    then validated (every key's type and range; UserError names the key, the value and what is allowed)."""
    config = recipe_config(recipe)
    if config_file:
        apply_file(config, config_file)
    apply_overrides(config, list(overrides))
    validate(config)
    return config


def train(config: Config, restart: bool = False, *, dist: DistEnv | None = None) -> dict:
    """Run ``config.recipe``: a staged run trains its stages in turn, a single recipe trains once."""
    if config.recipe in STAGED:
        return STAGED[config.recipe][0].run(config, restart=restart)
    return train_one(config, restart=restart, dist=dist)
