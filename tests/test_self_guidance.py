"""Self-guidance: terms parsed without torch (one-line errors), energies whose gradients match finite
differences, weight 0 equal to plain guidance bit for bit, the correction v σ_t ∇_{z_t} g added once to the
guided ε̂, and a centroid energy that falls along its own gradient on a tiny SD model."""

from __future__ import annotations

import pytest
import torch
from test_generate import assert_clean_failure, run_cli

from dreamsmith.errors import DreamsmithError
from dreamsmith.guidance.attention import hooks_active
from dreamsmith.guidance.conditioner_registry import build_conditioners
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.math import alpha_sigma, attention_centroid, attention_size, self_guidance_energy
from dreamsmith.guidance.self_guidance import SelfGuidance, term_target
from dreamsmith.self_guidance_terms import SelfGuidanceTerm, check_self_guidance_words, parse_self_guidance

PROMPT = "a red cube"


def test_terms_read_centroids_sizes_shapes_and_weights():
    assert parse_self_guidance("cube:centroid=0.3,0.5") == SelfGuidanceTerm("cube", "centroid", (0.3, 0.5))
    assert parse_self_guidance(" cube : size = .25 @ 2") == SelfGuidanceTerm("cube", "size", (0.25,), 2.0)
    assert parse_self_guidance("cube:shape=box(0.1,0.2,0.5,0.8)").target == (1.0, 0.1, 0.2, 0.5, 0.8)
    assert parse_self_guidance("cube:shape=disk(0.5,0.5,0.25)").target == (2.0, 0.5, 0.5, 0.25)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("cube centroid=0.3,0.5", "is not WORD:KIND=VALUE"),
        ("cube:middle=0.3", "unknown kind 'middle'"),
        ("cube:centroid=0.3", "cannot read '0.3' as 2 numbers"),
        ("cube:centroid=1.3,0.5", "fractions between 0 and 1"),
        ("cube:size=0", "above 0"),
        ("cube:shape=box(0.5,0.2,0.1,0.8)", "X0 < X1"),
        ("cube:shape=star(0.5)", "box(X0,Y0,X1,Y1) or disk(X,Y,R)"),
        ("cube:size=0.3@-1", "the weight after @ must be a number >= 0"),
    ],
)
def test_a_term_that_does_not_parse_is_refused_in_one_line(spec, words):
    with pytest.raises(DreamsmithError) as error:
        parse_self_guidance(spec)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_a_word_not_in_the_prompt_is_refused_naming_the_words():
    with pytest.raises(DreamsmithError, match="'sphere' is not a word of the prompt 'a red cube'; choose one"):
        check_self_guidance_words(PROMPT, [parse_self_guidance("sphere:size=0.3")])


def gaussian(mean_x: float, mean_y: float, std: float, size: int = 32) -> torch.Tensor:
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    return torch.exp(-((centres[None, :] - mean_x) ** 2 + (centres[:, None] - mean_y) ** 2) / (2 * std**2))


def test_the_centroid_of_a_gaussian_map_is_its_mean_and_its_size_grows_with_its_spread():
    centroid = attention_centroid(gaussian(0.3, 0.6, 0.05, size=64))  # 6 std inside the view
    assert torch.allclose(centroid, torch.tensor([0.3, 0.6], dtype=torch.float64), atol=1e-6)
    assert attention_size(gaussian(0.5, 0.5, 0.05)) < attention_size(gaussian(0.5, 0.5, 0.15))


@pytest.mark.parametrize("kind", ["centroid", "size", "shape"])
def test_the_energy_gradient_matches_finite_differences(kind):
    maps = (torch.rand(2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.05)
    maps.requires_grad_(True)
    targets = {"centroid": torch.tensor([0.2, 0.7], dtype=torch.float64),
               "size": torch.tensor(0.3, dtype=torch.float64),
               "shape": term_target(SelfGuidanceTerm("w", "shape", (2.0, 0.5, 0.5, 0.3)), 5, 6).double()}
    assert torch.autograd.gradcheck(lambda m: self_guidance_energy(kind, m, targets[kind]), (maps,))


def conditioner(prior, spec: str, weight: float) -> SelfGuidance:
    (built,) = build_conditioners([{"name": "self_guidance", "terms": [spec], "weight": weight}], prior,
                                  prompt=PROMPT)
    return built


def cfg_call(prior, conditioners, seed: int = 0, t: int = 600):
    """One [cond, uncond] call as the distillation core makes it: ``({label: eps}, z_t, t)``."""
    generator = torch.Generator().manual_seed(seed)
    z_t = torch.randn(2, 4, 4, 4, generator=generator)
    embeds = torch.cat([prior.encode_prompts([PROMPT] * 2), prior.encode_prompts([""] * 2)])
    t_call = torch.full((4,), t)
    context = ConditionContext(branch_labels=("cond", "cond", "uncond", "uncond"))
    eps = prior.predict_noise(torch.cat([z_t, z_t]), t_call, embeds, conditioners=conditioners, context=context)
    cond, uncond = eps.chunk(2)
    return {"cond": cond, "uncond": uncond}, z_t, t_call


def test_weight_zero_is_the_model_itself_bit_for_bit(tiny_sd_prior):
    plain, _, _ = cfg_call(tiny_sd_prior, [])
    off, _, _ = cfg_call(tiny_sd_prior, [conditioner(tiny_sd_prior, "cube:centroid=0.1,0.5", 0.0)])
    assert torch.equal(off["cond"], plain["cond"]) and torch.equal(off["uncond"], plain["uncond"])


def test_the_correction_is_v_sigma_grad_g_added_once_to_the_guided_noise(tiny_sd_prior):
    prior = tiny_sd_prior
    plain, z_t, t = cfg_call(prior, [])
    guide = conditioner(prior, "cube:centroid=0.1,0.5", 30.0)
    guided, _, _ = cfg_call(prior, [guide])
    delta_cond, delta_uncond = guided["cond"] - plain["cond"], guided["uncond"] - plain["uncond"]
    assert delta_cond.abs().max() > 1e-4  # it acts
    # the same δ on both branches: ε_u + s(ε_c − ε_u) moves by exactly δ, whatever s
    assert torch.allclose(delta_cond, delta_uncond, atol=1e-5)
    # and δ = v σ_t ∇_{z_t} g, with g recomputed here from the cond samples alone
    probe = conditioner(prior, "cube:centroid=0.1,0.5", 30.0)
    leaf = z_t.clone().requires_grad_(True)
    hooks = probe.attention_hooks(ConditionContext(branch_labels=("cond", "cond"), timesteps=t[:2]))
    with hooks_active(prior.unet, hooks), torch.enable_grad():
        prior.unet(leaf, t[:2], encoder_hidden_states=prior.encode_prompts([PROMPT] * 2))
        energy = probe.energy(leaf)
        (grad,) = torch.autograd.grad(energy.sum(), leaf)
    assert torch.allclose(energy.detach(), guide.last_energy, atol=1e-6)
    _, sigma = alpha_sigma(prior.alphas_cumprod, t[:2])
    assert torch.allclose(delta_cond, 30.0 * sigma.view(-1, 1, 1, 1) * grad, atol=1e-5, rtol=1e-4)


def test_a_small_step_along_minus_the_gradient_lowers_the_centroid_energy(tiny_sd_prior):
    prior = tiny_sd_prior
    guide = conditioner(prior, "cube:centroid=0.1,0.5", 1.0)
    embeds = prior.encode_prompts([PROMPT] * 2)
    z_t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), 500)
    context = ConditionContext(branch_labels=("cond", "cond"))
    eps_plain = prior.predict_noise(z_t, t, embeds)
    eps = prior.predict_noise(z_t, t, embeds, conditioners=[guide], context=context)
    before = guide.last_energy.clone()
    _, sigma = alpha_sigma(prior.alphas_cumprod, t)
    grad = (eps - eps_plain) / sigma.view(-1, 1, 1, 1)  # ∇_{z_t} g, to within the explicit-attention rounding
    step = 0.05 / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    prior.predict_noise(z_t - step * grad, t, embeds, conditioners=[guide], context=context)
    assert (guide.last_energy < before).all(), (before, guide.last_energy)


def test_bad_self_guidance_on_the_command_line_is_one_line(tiny_sd_dir, tmp_path):
    result = run_cli("generate", PROMPT, "--model", str(tiny_sd_dir), "--self-guidance", "sphere:size=0.3",
                     "--out", str(tmp_path / "run"))
    assert_clean_failure(result, "'sphere' is not a word of the prompt 'a red cube'")
    result = run_cli("generate", PROMPT, "--model", str(tiny_sd_dir), "--self-guidance", "cube:size",
                     "--out", str(tmp_path / "run"))
    assert_clean_failure(result, "is not WORD:KIND=VALUE")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_texture_command_runs_with_self_guidance_on_a_tiny_model(tiny_sd_dir, tmp_path):
    import yaml
    from test_texture_cli import SMALL
    from test_texture_stage import cube_with_uvs

    cube_with_uvs(tmp_path / "cube.glb")
    out = tmp_path / "run"
    result = run_cli("texture", str(tmp_path / "cube.glb"), "a wooden crate", "--model", str(tiny_sd_dir), "--out",
                     str(out), "--quiet", "--steps", "2", *SMALL, "--self-guidance", "crate:centroid=0.3,0.5@2",
                     "--self-guidance-weight", "5")
    assert result.returncode == 0, result.stderr
    (spec,) = yaml.safe_load((out / "config.yaml").read_text())["stages"][0]["guidance"]["conditioners"]
    assert spec == {"name": "self_guidance", "terms": ["crate:centroid=0.3,0.5@2"], "weight": 5.0}
    assert (out / "asset.glb").stat().st_size > 0
