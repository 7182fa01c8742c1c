"""``causal-rcm``: the whole Causal-rCM recipe, TF-CM then SF-DMD, as one resumable command.

Stage 1 trains ``stages.cm_method`` (TF-sCM by default, or TF-MeanFlow / TF-dCM) from the
causal teacher ``train.teacher`` for ``stages.cm_steps`` steps into ``OUT/stage1-<method>``;
stage 2 runs SF-DMD for ``stages.dmd_steps`` steps at ``stages.dmd_lr`` from that student
into ``OUT/stage2-sf-dmd``, matching ``train.dmd_teacher`` (default ``train.teacher``; the
bidirectional teacher is the usual choice). Every other setting (model, data, batch, seeds,
evaluation) is shared. Each stage is an ordinary training run that resumes from its own
checkpoint, so an interrupted run continues where it stopped; the final student is copied to
``OUT/model`` and ``OUT/train_report.json`` holds both stages' reports. With
``dmd.scm_weight`` > 0 the SF-DMD stage keeps the TF-sCM loss as a regulariser (as rCM
does), with the causal teacher ``train.teacher``'s tangents.
"""

from __future__ import annotations

import copy
import json
import shutil

from causal_rcm.config import Config, DcmConfig, DmdConfig, MeanFlowConfig, ScmConfig, StagesConfig
from causal_rcm.distill.base import distill_config
from causal_rcm.errors import UserError
from causal_rcm.runs.single import train_one
from causal_rcm.train.parallel import init_dist, shutdown

CM_METHODS = {"tf-scm": "scm", "tf-meanflow": "meanflow", "tf-dcm": "dcm"}  # each consistency recipe's own section


def causal_rcm_config() -> Config:
    """The staged run has the sections of all its stages: any consistency method's, SF-DMD's, its own."""
    config = distill_config("causal-rcm", steps=1000, batch_size=32, eval_every=500, lr=2e-5)
    config.scm, config.meanflow, config.dcm = ScmConfig(), MeanFlowConfig(), DcmConfig()
    config.dmd, config.stages = DmdConfig(), StagesConfig()
    return config


class CausalRCMRun:
    """Not a single objective: :meth:`run` trains the two stages in turn."""

    name = "causal-rcm"

    @classmethod
    def prepare(cls, config: Config) -> None:
        if config.stages.cm_method not in CM_METHODS:
            raise UserError(f"stages.cm_method must be one of {', '.join(CM_METHODS)}, got {config.stages.cm_method!r}")
        if not config.train.teacher:
            raise UserError("causal-rcm needs train.teacher=PATH: the causal teacher (`causal-rcm train causal-teacher`)")

    @staticmethod
    def stage_configs(config: Config) -> list[Config]:
        out = config.out_dir()
        stages = config.stages
        cm = copy.deepcopy(config)
        cm.recipe = stages.cm_method
        cm.train.steps = stages.cm_steps
        cm.train.out_dir = str(out / f"stage1-{stages.cm_method}")
        for name in ("stages", "dmd", *CM_METHODS.values()):  # each stage keeps the sections its recipe has
            if name != CM_METHODS[stages.cm_method]:
                setattr(cm, name, None)
        dmd = copy.deepcopy(config)
        dmd.recipe = "sf-dmd"
        dmd.stages = dmd.meanflow = dmd.dcm = None
        dmd.train.steps = stages.dmd_steps
        dmd.train.out_dir = str(out / "stage2-sf-dmd")
        dmd.train.teacher = config.train.dmd_teacher or config.train.teacher
        dmd.train.init = str(out / f"stage1-{stages.cm_method}" / "model")
        if config.dmd.scm_weight > 0:
            dmd.train.cm_teacher = config.train.cm_teacher or config.train.teacher
        dmd.optim.lr = stages.dmd_lr
        return [cm, dmd]

    @classmethod
    def run(cls, config: Config, restart: bool = False) -> dict:
        cls.prepare(config)
        dist = init_dist(config.train.device)  # one process group for both stages
        try:
            reports = [train_one(stage, restart=restart, dist=dist) for stage in cls.stage_configs(config)]
            if dist.is_main:
                cls._finish(config, reports)
        finally:
            shutdown(dist)
        return cls._summary(reports)

    @staticmethod
    def _summary(reports: list[dict]) -> dict:
        return {
            "recipe": "causal-rcm",
            "stages": reports,
            "steps": sum(r["steps"] for r in reports),
            "train_seconds": sum(r["train_seconds"] for r in reports),
            "eval": reports[-1].get("eval", {}),
        }

    @classmethod
    def _finish(cls, config: Config, reports: list[dict]) -> None:
        out = config.out_dir()
        final = out / "model"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(out / "stage2-sf-dmd" / "model", final)
        (out / "train_report.json").write_text(json.dumps(cls._summary(reports), indent=2) + "\n")
