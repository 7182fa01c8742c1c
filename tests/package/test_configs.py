"""Every committed config file under configs/ resolves: its keys exist, its values read, its `extends` chain holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from causal_rcm.config import config_to_dict
from causal_rcm.runs import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUNS = sorted(p for p in CONFIGS.rglob("*.json") if "recipe" in json.loads(p.read_text()))


@pytest.mark.parametrize("path", RUNS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_a_config_file_resolves(path):
    data = json.loads(path.read_text())
    config = config_to_dict(load_config(data["recipe"], path))
    for section, values in data.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert config[section][key] == value, f"{section}.{key}"


def test_the_atari_chain_has_a_file_per_stage():
    names = {p.stem for p in RUNS if p.parent.name == "breakout"}
    assert names == {"teacher", "causal-teacher", "tf-scm", "sf-dmd"}
