"""StableVITON's published LDM layout on tiny random weights: every key placed, zero-initialised garment
cross-attention leaves the base inpainting UNet's prediction bit for bit (the network and the whole texture
source), several garments' tokens concatenate, and ``dreamsmith tryon --model stableviton:CKPT`` runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from test_generate import assert_clean_failure, run_cli  # noqa: E402
from tryon_models import build_tiny_stableviton, tiny_stableviton_state, tryon_with_model  # noqa: E402
from tryon_score import capsule, striped_garment  # noqa: E402

from dreamsmith.errors import ModelLoadError  # noqa: E402
from dreamsmith.tryon.garments import Garment  # noqa: E402
from dreamsmith.tryon.source import ViewBatch  # noqa: E402
from dreamsmith.tryon.stableviton import StableVITON  # noqa: E402
from dreamsmith.tryon.stableviton_source import StableVITONModel, StableVITONSource  # noqa: E402


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


def test_one_garment_is_stablevitons_own_and_the_same_garment_twice_reads_as_once():
    model, _, dressed, _, _ = predictions(zero_warps=False)
    sample, timestep, context, garment = inputs()
    with torch.no_grad():
        assert torch.equal(model(sample, timestep, context, [garment]), dressed)
        twice = model(sample, timestep, context, [garment, garment])
        other = model(sample, timestep, context, [garment, garment.flip(-1)])
    assert torch.allclose(twice, dressed, atol=1e-5) and (other - dressed).abs().max() > 1e-5


def views(batch=2, size=24):
    generator = torch.Generator().manual_seed(3)
    region = torch.zeros(batch, 1, size, size)
    region[..., : size // 2, :] = 1
    normal = torch.nn.functional.normalize(torch.randn(batch, size, size, 3, generator=generator), dim=-1)
    return ViewBatch(torch.rand(batch, size, size, 3, generator=generator), torch.ones(batch, size, size, 1), normal,
                     torch.ones(batch, size, size, 1), region, cameras=None)


def garments(count=1):
    rgba = torch.rand(count, 16, 16, 4, generator=torch.Generator().manual_seed(4)).numpy()
    rgba[..., 3] = 1
    return [Garment(Path(f"g{i}.png"), rgba[i]) for i in range(count)]


def test_the_whole_checkpoint_loads_and_zero_warps_make_the_source_the_base_inpainting_unet(tmp_path):
    model = StableVITONModel.load(build_tiny_stableviton(tmp_path / "sv", zero_warps=True), torch.device("cpu"))
    assert model.prior.image_size == 32 and model.prior.latent_channels == 4 and len(model.network.warps) == 2
    source = StableVITONSource(model, garments(), steps=2, guidance_scale=3.0)
    dressed = source.edit(views())

    def base(sample, timestep, context, garment_latents):
        return model.network.unet(sample, timestep, encoder_hidden_states=context).sample

    model.network.forward = base
    assert torch.equal(source.edit(views()).images, dressed.images)
    assert torch.equal(dressed.confidence, views().region[:, 0])


def test_the_source_reads_the_garment_through_trained_warps(tmp_path):
    model = StableVITONModel.load(build_tiny_stableviton(tmp_path / "sv", zero_warps=False), torch.device("cpu"))
    one = StableVITONSource(model, garments(), steps=2).edit(views()).images
    two = StableVITONSource(model, garments(2), steps=2).edit(views()).images
    assert (one - two).abs().max() > 1e-4


@pytest.mark.slow
def test_dreamsmith_tryon_runs_stableviton_end_to_end_on_a_tiny_checkpoint(tmp_path):
    folder = build_tiny_stableviton(tmp_path / "models" / "stableviton")
    scores, out = tryon_with_model(tmp_path, f"stableviton:{folder / 'VITONHD.safetensors'}")
    assert scores["body_error"] <= 0.03, scores  # outside the region the capsule keeps its colour
    assert (out / "asset.glb").is_file() and (out / "previews" / "tryon_views.png").is_file()


def test_a_checkpoint_with_missing_or_unexpected_keys_is_refused_in_one_line_naming_them(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = build_tiny_stableviton(tmp_path / "sv")
    state = load_file(folder / "VITONHD.safetensors")
    extra = "cond_stage_model.mapper.resblocks.0.attn.extra"
    cases = [
        ({k: v for k, v in state.items() if k != "first_stage_model.decoder.conv_out.bias"},
         "1 missing: decoder.conv_out.bias"),
        ({k: v for k, v in state.items() if k != "cond_stage_model.final_ln.bias"},
         "1 missing: cond_stage_model.final_ln.bias"),
        ({k: v for k, v in state.items() if k != "learnable_vector"}, "1 missing: learnable_vector"),
        ({**state, "sampler.weight": torch.zeros(1)}, "1 unexpected: sampler.weight"),
        ({**state, extra: torch.zeros(1)}, f"1 unexpected: {extra}"),
        ({**state, "first_stage_model.encoder.extra.weight": torch.zeros(1)},
         "1 unexpected: first_stage_model.encoder.extra.weight"),
    ]
    for tensors, needle in cases:
        save_file(tensors, folder / "VITONHD.safetensors")
        with pytest.raises(ModelLoadError, match=needle.replace(".", r"\.")):
            StableVITONModel.load(folder, torch.device("cpu"))
    capsule(tmp_path / "capsule.glb", 16)
    striped_garment(tmp_path / "stripes.png")
    result = run_cli("tryon", str(tmp_path / "capsule.glb"), str(tmp_path / "stripes.png"), "--model",
                     f"stableviton:{folder}", "--out", str(tmp_path / "run"))
    assert_clean_failure(result, "does not fit StableVITON's layout", "1 unexpected: first_stage_model.encoder.extra")
    assert not (tmp_path / "run").exists()
