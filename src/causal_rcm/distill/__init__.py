"""Training recipes (one objective per file). Importing this package registers them."""

from __future__ import annotations

from ..config import Config
from ..errors import UserError
from .dmd import SFDMDRecipe
from .flow import CausalTeacherRecipe, TeacherRecipe
from .full_recipe import CausalRCMRecipe
from .ode_init import ODEInitRecipe
from .tf_dcm import TFDCMRecipe
from .tf_meanflow import TFMeanFlowRecipe
from .tf_scm import TFSCMRecipe

RECIPE_CLASSES = {
    "teacher": TeacherRecipe,
    "causal-teacher": CausalTeacherRecipe,
    "tf-dcm": TFDCMRecipe,
    "tf-scm": TFSCMRecipe,
    "tf-meanflow": TFMeanFlowRecipe,
    "sf-dmd": SFDMDRecipe,
    "ode-init": ODEInitRecipe,
    "causal-rcm": CausalRCMRecipe,
}


def recipe_class(name: str) -> type:
    """The recipe class registered as ``name``."""
    if name not in RECIPE_CLASSES:
        raise UserError(f"recipe {name!r} has no implementation; choose from {', '.join(RECIPE_CLASSES)}")
    return RECIPE_CLASSES[name]


def build_recipe(config: Config, world):
    """The recipe object for ``config.recipe`` over the data ``world``."""
    return recipe_class(config.recipe)(config, world)
