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
