"""Run configs: each recipe has its own sections, old single-`objective` configs still read, bad keys named."""

from __future__ import annotations

import json

import pytest

from causal_rcm.config import LEGACY_OBJECTIVE_KEYS, SECTIONS, config_to_dict, save_config
from causal_rcm.errors import UserError
from causal_rcm.runs import load_config, recipe_names
from causal_rcm.runs.staged import CausalRCMRun

OWN_SECTIONS = {
    "teacher": set(), "causal-teacher": set(), "tf-scm": {"scm"}, "tf-dcm": {"dcm"}, "tf-meanflow": {"meanflow"},
    "sf-dmd": {"dmd", "scm"}, "ode-init": {"ode"}, "causal-rcm": {"scm", "dcm", "meanflow", "dmd", "stages"},
}


@pytest.mark.parametrize("recipe", sorted(OWN_SECTIONS))
def test_a_recipe_has_only_its_own_sections(recipe):
    data = config_to_dict(load_config(recipe))
    assert {s for s in SECTIONS if s in data} == OWN_SECTIONS[recipe]
    assert set(recipe_names()) == set(OWN_SECTIONS)


def test_a_key_of_a_section_the_recipe_lacks_is_refused():
    with pytest.raises(UserError, match="recipe teacher has no scm section"):
        load_config("teacher", None, ["scm.p_mean=1"])
    assert load_config("tf-scm", None, ["scm.p_mean=1"]).scm.p_mean == 1.0


def test_an_old_objective_key_in_an_override_names_its_new_home():
    with pytest.raises(UserError, match=r"objective.tangent_warmup is now scm.tangent_warmup"):
        load_config("tf-scm", None, ["objective.tangent_warmup=3"])


def test_an_old_single_objective_config_file_reads_into_the_sections(tmp_path):
    """A run's resolved config.json from before the split (the shipped checkpoints' records) still applies: its keys
    move to their sections; those of sections the recipe has no use for (the old bag's defaults) are dropped."""
    old = {"recipe": "sf-dmd", "objective": {"shift": 8.0, "critic_steps": 3, "rollout_window": 8, "p_std": 1.2,
                                            "ode_steps": 7, "cm_method": "tf-dcm", "meanflow_ratio": 0.5}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    config = load_config("sf-dmd", path)
    assert (config.objective.shift, config.dmd.critic_steps, config.dmd.rollout_window, config.scm.p_std) == (8.0, 3, 8, 1.2)
    assert config.ode is None and config.stages is None and config.meanflow is None
    assert set(LEGACY_OBJECTIVE_KEYS) & set(config_to_dict(config)["objective"]) == set()


def test_a_new_file_with_a_section_the_recipe_lacks_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"dmd": {"critic_steps": 2}}))
    with pytest.raises(UserError, match="recipe tf-scm has no dmd section"):
        load_config("tf-scm", path)


def test_a_resolved_config_reads_back_to_itself(tmp_path):
    config = load_config("causal-rcm", None, ["stages.cm_method=tf-dcm", "dcm.intervals=12", "dmd.scm_weight=0.2"])
    save_config(config, tmp_path / "config.json")
    again = load_config("causal-rcm", tmp_path / "config.json")
    assert config_to_dict(again) == config_to_dict(config)


def test_the_staged_run_gives_each_stage_its_recipes_sections():
    config = load_config("causal-rcm", None, ["stages.cm_method=tf-meanflow", "meanflow.ratio=0.5", "train.teacher=t"])
    cm, dmd = CausalRCMRun.stage_configs(config)
    assert {s for s in SECTIONS if getattr(cm, s) is not None} == OWN_SECTIONS["tf-meanflow"]
    assert {s for s in SECTIONS if getattr(dmd, s) is not None} == OWN_SECTIONS["sf-dmd"]
    assert cm.meanflow.ratio == 0.5
