"""Training recipes (one objective per file). Importing this package registers them."""

from __future__ import annotations

from ..config import Config
from ..errors import UserError
from .flow import CausalTeacherRecipe, TeacherRecipe

RECIPE_CLASSES = {
    "teacher": TeacherRecipe,
    "causal-teacher": CausalTeacherRecipe,
}


def build_recipe(config: Config, world):
    """The recipe object for ``config.recipe`` over the data ``world``."""
    if config.recipe not in RECIPE_CLASSES:
        raise UserError(f"recipe {config.recipe!r} has no implementation; choose from {', '.join(RECIPE_CLASSES)}")
    return RECIPE_CLASSES[config.recipe](config, world)
