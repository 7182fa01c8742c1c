"""Training recipes: one objective per file, each a :class:`~causal_rcm.train.trainer.Recipe`, in one registry.

:data:`RECIPES` maps a recipe's name to its class and its defaults (a function returning the recipe's
:class:`~causal_rcm.config.Config`): the one place a recipe is declared. Runs made of several recipes
(the staged ``causal-rcm``) are composed above, in :mod:`causal_rcm.runs`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from causal_rcm.config import Config
from causal_rcm.distill.dmd import SFDMDRecipe, sf_dmd_config
from causal_rcm.distill.flow import CausalTeacherRecipe, TeacherRecipe, causal_teacher_config, teacher_config
from causal_rcm.distill.ode_init import ODEInitRecipe, ode_init_config
from causal_rcm.distill.tf_dcm import TFDCMRecipe, tf_dcm_config
from causal_rcm.distill.tf_meanflow import TFMeanFlowRecipe, tf_meanflow_config
from causal_rcm.distill.tf_scm import TFSCMRecipe, tf_scm_config
from causal_rcm.train.trainer import Recipe

__all__ = ["RECIPES", "RecipeEntry"]


class RecipeEntry(NamedTuple):
    recipe: type[Recipe]
    defaults: Callable[[], Config]


RECIPES: dict[str, RecipeEntry] = {
    "teacher": RecipeEntry(TeacherRecipe, teacher_config),
    "causal-teacher": RecipeEntry(CausalTeacherRecipe, causal_teacher_config),
    "tf-dcm": RecipeEntry(TFDCMRecipe, tf_dcm_config),
    "tf-scm": RecipeEntry(TFSCMRecipe, tf_scm_config),
    "tf-meanflow": RecipeEntry(TFMeanFlowRecipe, tf_meanflow_config),
    "sf-dmd": RecipeEntry(SFDMDRecipe, sf_dmd_config),
    "ode-init": RecipeEntry(ODEInitRecipe, ode_init_config),
}
