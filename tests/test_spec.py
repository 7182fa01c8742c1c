"""PipelineSpec: the checkpoint's pipeline section as its sampler is built from it."""

from causal_rcm.spec import PipelineSpec

from .checkpoints import pipeline_section


def test_samplers_complete_x0_unless_the_checkpoint_says_not():
    """Checkpoints written before ``complete_x0`` existed (no key) get it; one that turns it off keeps it off."""
    section = pipeline_section()
    assert "complete_x0" not in section["sampler"]
    spec = PipelineSpec.from_dict(section)
    assert spec.sampler.complete_x0 and spec.sampler_spec().complete_x0
    off = PipelineSpec.from_dict({**section, "sampler": {**section["sampler"], "complete_x0": False}})
    assert not off.sampler_spec().complete_x0
    assert PipelineSpec.from_dict(off.to_dict()) == off


def test_no_path_has_no_spec(tmp_path, monkeypatch):
    """``""`` (no checkpoint: a recipe's fresh model) is not the working folder, which ``Path("")`` would be."""
    monkeypatch.chdir(tmp_path)  # a folder without a config.json, which read as a checkpoint would be an error
    assert PipelineSpec.read_if_any("") is None
    assert PipelineSpec.read_if_any(tmp_path / "missing") is None
