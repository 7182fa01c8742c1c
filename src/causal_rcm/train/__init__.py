"""The recipe-agnostic trainer: the Recipe protocol, the loop, EMA, checkpoints, FSDP2 and process groups.

It knows no recipe and composes nothing: :mod:`causal_rcm.runs` builds a data source and a recipe and hands
them to :class:`Trainer`.
"""

from causal_rcm.train.trainer import DataSource, Recipe, Trainer

__all__ = ["DataSource", "Recipe", "Trainer"]
