"""StableVITON's published LDM layout on tiny random weights: every key placed, and zero-initialised
garment cross-attention leaves the base inpainting UNet's prediction bit for bit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tryon_models import tiny_stableviton_state  # noqa: E402

from dreamsmith.errors import ModelLoadError  # noqa: E402
from dreamsmith.tryon.stableviton import StableVITON  # noqa: E402


def inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 13, 8, 8, generator=generator), torch.tensor(400),
            torch.randn(2, 5, 32, generator=generator), torch.randn(2, 4, 8, 8, generator=generator))


def predictions(zero_warps: bool):
    """(the model, its state, its prediction with a garment, with the garment mirrored, and the base UNet's)."""
    state, params = tiny_stableviton_state(zero_warps=zero_warps)
    model = StableVITON.from_ldm_state(state, params).eval()
    sample, timestep, context, garment = inputs()
    with torch.no_grad():
        dressed = model(sample, timestep, context, garment)
        other = model(sample, timestep, context, garment.flip(-1))
        base = model.unet(sample, timestep, encoder_hidden_states=context).sample
    return model, state, dressed, other, base


def test_zero_initialised_garment_blocks_equal_the_base_inpainting_unet_bit_for_bit():
    model, _, dressed, other, base = predictions(zero_warps=True)
    assert torch.equal(dressed, base) and torch.equal(other, base)
    assert len(model.warps) == 2


def test_trained_garment_blocks_read_the_garment():
    model, state, dressed, other, base = predictions(zero_warps=False)
    assert (dressed - base).abs().max() > 1e-4 and (dressed - other).abs().max() > 1e-5
    name = "model.diffusion_model.warp_zero_convs.1.weight"
    assert torch.equal(model.warps[1].zero_conv.weight, state[name])
    assert torch.equal(model.encoder.cond_first.weight, state["control_model.cond_first_block.0.weight"])


def test_a_checkpoint_of_another_layout_is_refused_in_one_line():
    state, params = tiny_stableviton_state()
    state.pop("control_model.cond_first_block.0.weight")
    state.pop("control_model.cond_first_block.0.bias")
    with pytest.raises(ModelLoadError, match="cond_first_block"):
        StableVITON.from_ldm_state(state, params)
    state, params = tiny_stableviton_state()
    state["model.diffusion_model.input_blocks.1.9.weight"] = torch.zeros(1)
    with pytest.raises(ModelLoadError, match="no place"):
        StableVITON.from_ldm_state(state, params)
