"""The CPU fast paths (the fused hash grid, empty-space skipping) compute the reference paths' math:
a dreamfusion step on the tiny SD model gives the same SDS gradients on the field's parameters."""

from __future__ import annotations

import torch

from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.stage import Stage


def step_gradients(config, prior, fast: bool) -> dict[str, torch.Tensor]:
    """The parameter gradients of the first step of ``config``'s stage, seed 0."""
    torch.manual_seed(0)
    stage = Stage(config.stages[0], prior, config.prompt, torch.device("cpu"))
    representation = stage.representation
    if not fast:
        representation.field.encoding.grid.fused = False
        representation.renderer.occupancy = None
    stage.step(0, torch.Generator().manual_seed(config.seed))
    return {name: p.grad.clone() for name, p in representation.field.named_parameters() if p.grad is not None}


def test_dreamfusion_step_gradients_on_the_fast_path_equal_the_reference_path(tiny_sd_dir, tiny_sd_prior):
    torch.set_num_threads(1)
    config = make_config("a hamburger", preset="dreamfusion", model=str(tiny_sd_dir), steps=1,
                         overrides=["camera.resolution=32", "shading.albedo_steps=0", "shading.albedo_probability=0"])
    reference = step_gradients(config, tiny_sd_prior, fast=False)
    fast = step_gradients(config, tiny_sd_prior, fast=True)
    assert reference.keys() == fast.keys() and len(reference) >= 10
    for name, expected in reference.items():
        assert expected.abs().max() > 0, name
        scale = expected.abs().max()
        assert (fast[name] - expected).abs().max() <= 1e-3 * scale, name
