"""Personalization adapter folders: the TI and LoRA files in the layouts diffusers reads and writes, loading
onto a prior as named adapters beside a guidance's own LoRA, the base-model check, and --adapter on the CLI."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file
from test_generate import SMALL, assert_clean_failure, run_cli

from dreamsmith.engine.personalize import PersonalizeConfig, personalize
from dreamsmith.engine.personalize.trainer import LORA_NAME
from dreamsmith.errors import ConfigError
from dreamsmith.guidance.adapters import ADAPTER_FILE, adapter_tokens, load_adapter, model_fingerprint
from dreamsmith.guidance.conditioner_registry import build_conditioners
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.lora import LORA_FILE, lora_names
from dreamsmith.guidance.textual_inversion import EMBEDS_FILE, load_embeddings

PROMPT = "a <sks> a"


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """Four 8x8 pink-square images in a folder."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("subject")
    for index in range(4):
        pixels = torch.full((8, 8, 3), 255, dtype=torch.uint8)
        pixels[2:6, 1 + index % 2:5 + index % 2] = torch.tensor([255, 105, 180], dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"view{index}.png")
    return folder


@pytest.fixture(scope="module")
def trained(subject, tiny_sd_dir, tmp_path_factory):
    """A LoRA adapter trained 3 steps on the tiny SD model, and the prior it was trained on."""
    prior = load_prior(tiny_sd_dir)
    out = tmp_path_factory.mktemp("adapters") / "pink"
    config = PersonalizeConfig(method="lora", class_word="a", steps=3, model=str(tiny_sd_dir), sample_steps=2,
                               learning_rate=5e-2)
    personalize([subject], config, out, prior=prior)
    return out, prior


def _eps(prior, prompt, conditioners=(), seed=0):
    generator = torch.Generator().manual_seed(seed)
    z_t = torch.randn(2, prior.latent_channels, 4, 4, generator=generator)
    return prior.predict_noise(z_t, torch.tensor([300, 700]), prior.encode_prompts([prompt]), None, conditioners)


def test_adapter_folder_holds_the_published_layouts(trained, tiny_sd_dir):
    out, prior = trained
    from safetensors import safe_open

    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ADAPTER_FILE, EMBEDS_FILE, LORA_FILE, "README.md", "loss.png", "samples.png"])
    with safe_open(str(out / EMBEDS_FILE), framework="pt") as handle:
        assert list(handle.keys()) == ["<sks>"] and handle.get_tensor("<sks>").shape == (32,)
    with safe_open(str(out / LORA_FILE), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("unet.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in keys)
    assert metadata["unet.r"] == 4 and metadata["unet.lora_alpha"] == 4
    info = json.loads((out / ADAPTER_FILE).read_text())
    assert info["method"] == "lora" and info["token"] == "<sks>" and info["steps"] == 3
    assert info["base_model_hash"] == model_fingerprint(load_prior(tiny_sd_dir)) != ""
    assert "<sks>" in (out / "README.md").read_text()


def test_saved_lora_reads_back_through_diffusers_own_loader(trained, tiny_sd_dir):
    """diffusers' lora_state_dict + load_lora_adapter on a fresh UNet give our loader's output exactly."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    out, _ = trained
    ours = load_prior(tiny_sd_dir)
    conditioner = load_adapter(ours, out)
    theirs = load_prior(tiny_sd_dir)
    load_embeddings(theirs, out / EMBEDS_FILE)  # the token only: the LoRA comes from diffusers' loader
    state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(str(out / LORA_FILE))
    theirs.unet.load_lora_adapter(state, prefix="unet", adapter_name="diffusers", network_alphas=alphas)
    expected = _eps(ours, PROMPT, [conditioner])
    assert torch.equal(_eps(theirs, PROMPT), expected)
    assert not torch.equal(expected, _eps(ours, PROMPT))  # the trained LoRA changes the output


def test_round_trip_gives_the_trained_models_outputs_exactly(trained, tiny_sd_dir):
    out, trained_prior = trained
    from dreamsmith.guidance.lora import LoRAConditioner

    expected = _eps(trained_prior, PROMPT, [LoRAConditioner(LORA_NAME)])
    fresh = load_prior(tiny_sd_dir)
    conditioner = load_adapter(fresh, out)
    assert torch.equal(_eps(fresh, PROMPT, [conditioner]), expected)
    assert torch.equal(fresh.encode_prompts([PROMPT]), trained_prior.encode_prompts([PROMPT]))


def test_several_named_adapters_beside_vsds_own_lora(trained, tiny_sd_dir, tmp_path):
    from dreamsmith.guidance.vsd import VSDConfig, VSDGuidance

    out, _ = trained
    second = tmp_path / "second-one"
    shutil.copytree(out, second)
    prior = load_prior(tiny_sd_dir)
    specs = [{"name": "adapter", "path": str(out), "scale": 1.0}, {"name": "adapter", "path": str(second)}]
    conditioners = build_conditioners(specs, prior)
    VSDGuidance(prior, VSDConfig(prompt=PROMPT), conditioners)
    assert lora_names(prior.unet) == {"adapter_pink", "adapter_second_one", "particle"}
    base = _eps(load_prior(tiny_sd_dir), "a a")
    assert torch.equal(_eps(prior, "a a"), base)  # no conditioner named: every adapter off
    assert torch.equal(_eps(prior, "a a", [build_conditioners([{**specs[0], "scale": 0.0}], prior)[0]]), base)


def test_third_party_files_without_adapter_json_load(tiny_sd_dir, tmp_path):
    """A TI file as diffusers' textual_inversion example saves it and a LoRA as save_lora_weights writes it."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = tmp_path / "downloaded"
    folder.mkdir()
    save_file({"<cat-toy>": torch.randn(32, generator=torch.Generator().manual_seed(1))}, str(folder / EMBEDS_FILE))
    donor = load_prior(tiny_sd_dir).unet
    donor.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(donor),
                                              unet_lora_adapter_metadata=donor.peft_config["default"].to_dict())
    assert adapter_tokens(folder) == ["<cat-toy>"]
    prior = load_prior(tiny_sd_dir)
    conditioner = load_adapter(prior, folder)
    with torch.no_grad():
        donor_eps = donor(torch.ones(1, 4, 4, 4), 500, encoder_hidden_states=prior.encode_prompts(["a <cat-toy>"]))
    ours = prior.predict_noise(torch.ones(1, 4, 4, 4), 500, prior.encode_prompts(["a <cat-toy>"]), None,
                               [conditioner])
    assert torch.allclose(ours, donor_eps.sample, atol=1e-6)  # same weights, alpha/rank read from the metadata


def test_a_multi_vector_token_encodes_as_diffusers_load_textual_inversion(tiny_sd_dir, tmp_path):
    """A [3, D] embedding (diffusers' textual_inversion --num_vectors 3): three words, the prompt's token written
    as all of them; the same prompt embeddings as diffusers' own loader gives its pipeline."""
    from diffusers import StableDiffusionPipeline

    file = tmp_path / EMBEDS_FILE
    save_file({"<cat-toy>": torch.randn(3, 32, generator=torch.Generator().manual_seed(4))}, str(file))
    prior = load_prior(tiny_sd_dir)
    plain = prior.encode_prompts(["a red cube"])
    assert load_embeddings(prior, file) == ["<cat-toy>"]
    assert load_embeddings(prior, file) == ["<cat-toy>"]  # a second stage loading the same adapter
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    pipeline.load_textual_inversion(str(file))
    for prompt in ("a <cat-toy> cube", "<cat-toy>, a <cat-toy>", "a red cube"):
        expected, _ = pipeline.encode_prompt(prompt, "cpu", 1, False)
        assert torch.equal(prior.encode_prompts([prompt]), expected), prompt
    assert torch.equal(prior.encode_prompts(["a red cube"]), plain)
    assert prior.prompt_tokens("a <cat-toy>")[0] == prior.prompt_tokens("a a a a")[0]  # 3 words + "a" + 2 specials
    save_file({"<bad>": torch.zeros(2, 3, 32)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match=r"has shape \[2, 3, 32\]; a token's embedding is \[D\] or \[n, D\]"):
        load_embeddings(prior, tmp_path / "bad.safetensors")


def test_adapter_for_another_base_model_is_refused(trained, tiny_sd_dir, tmp_path):
    out, _ = trained
    other = tmp_path / "other"
    shutil.copytree(out, other)
    info = json.loads((other / ADAPTER_FILE).read_text())
    (other / ADAPTER_FILE).write_text(json.dumps({**info, "base_model_hash": "0123456789abcdef"}))
    prior = load_prior(tiny_sd_dir)
    with pytest.raises(ConfigError, match="was trained on .* not on"):
        load_adapter(prior, other)
    assert lora_names(prior.unet) == set()


def test_missing_or_empty_adapter_folder_is_one_line(tiny_sd_dir, tmp_path):
    prior = load_prior(tiny_sd_dir)
    with pytest.raises(ConfigError, match="does not exist"):
        load_adapter(prior, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no adapter"):
        load_adapter(prior, tmp_path / "empty")
    out = tmp_path / "run"
    assert_clean_failure(run_cli("generate", PROMPT, "--model", str(tiny_sd_dir), "--out", str(out), "--adapter",
                                 str(tmp_path / "nowhere")), "adapter folder", "does not exist")
    assert not out.exists()


@pytest.mark.slow
def test_generate_with_an_adapter_runs_and_refuses_another_base(trained, tiny_sd_dir, tiny_sdxl_dir, tmp_path):
    out, _ = trained
    run = tmp_path / "run"
    result = run_cli("generate", PROMPT, "--model", str(tiny_sd_dir), "--steps", "2", "--out", str(run),
                     "--adapter", str(out), "--adapter-scale", "0.5", "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    config = (run / "config.yaml").read_text()
    assert "name: adapter" in config and "scale: 0.5" in config and (run / "asset.glb").exists()
    other = tmp_path / "other-run"
    result = run_cli("generate", PROMPT, "--model", str(tiny_sdxl_dir), "--steps", "1", "--out", str(other),
                     "--adapter", str(out), *SMALL)
    assert_clean_failure(result, "was trained on")
    assert not (other / "asset.glb").exists()


def test_lora_scale_zero_and_init_loss_identities_hold_for_loaded_adapters(trained, tiny_sd_dir):
    out, _ = trained
    prior = load_prior(tiny_sd_dir)
    base = _eps(prior, "a a")
    conditioner = load_adapter(prior, out, scale=0.0)
    assert torch.equal(_eps(prior, "a a", [conditioner]), base)
    assert math.isfinite(float(_eps(prior, PROMPT, [conditioner]).abs().sum()))


def test_reward_guidance_in_score_distillation_adds_w_times_adapter_minus_base(trained, tiny_sd_dir):
    """DCO's reward term in the SDS target: ε_cfg + w(ε_adapter(y) − ε_base(y)), ε_base the adapter at scale 0."""
    from dreamsmith.guidance.distillation import REWARD_BASE
    from dreamsmith.guidance.sds import SDSConfig, SDSGuidance
    from dreamsmith.renderers.cameras import orbit_cameras
    from dreamsmith.renderers.outputs import RenderOutput

    out, _ = trained
    prior = load_prior(tiny_sd_dir)
    config = SDSConfig(prompt=PROMPT, guidance_scale=7.5, view_dependent_prompting=False)
    rewarded = SDSGuidance(prior, config, [load_adapter(prior, out, 1.0, reward_scale=2.0)])
    plain = SDSGuidance(prior, config, [load_adapter(prior, out, 1.0)])
    cameras = orbit_cameras(2, 20.0, 2.0, 40.0, 16)
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(3))
    render = RenderOutput(rgb=rgb, opacity=torch.ones(2, 16, 16, 1), depth=torch.ones(2, 16, 16, 1))
    z_t = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([300, 600])
    branches = rewarded.branches(render, cameras, 0)
    eps = rewarded.predict(z_t, t, branches, render, cameras, 0)
    eps_plain = plain.predict(z_t, t, branches, render, cameras, 0)
    assert set(eps) == {"uncond", "cond", REWARD_BASE} and set(eps_plain) == {"uncond", "cond"}
    assert torch.equal(eps["cond"], eps_plain["cond"])
    without = SDSGuidance(prior, config).predict(z_t, t, branches, render, cameras, 0)
    # the adapter at scale 0 is the base model (a batch of 2 against one of 4: float rounding only)
    assert torch.allclose(eps[REWARD_BASE], without["cond"], atol=1e-6)
    cfg = plain.combine(branches, eps_plain, 0)
    assert torch.allclose(rewarded.combine(branches, eps, 0), cfg + 2.0 * (eps["cond"] - eps[REWARD_BASE]))
    assert not torch.equal(eps["cond"], without["cond"])


def test_batch_jobs_take_the_adapters_words_on_a_closed_vocabulary_model(trained):
    """`batch --adapter`: every job gets the adapter's conditioner, and its token passes the embedded
    prior's caption check (which still refuses the prompt without the adapter)."""
    from dreamsmith.cli import adapter_specs, conditioners_override
    from dreamsmith.engine.batch.manifest import JobSpec, Manifest
    from dreamsmith.engine.batch.validation import validate

    out, _ = trained
    overrides = tuple(conditioners_override([], [], 0.3, adapter_specs([out], 1.0)))
    jobs = [JobSpec(id="with", prompt="a <sks> sphere", overrides=overrides),
            JobSpec(id="without", prompt="a <sks> sphere", line=2)]
    manifest = validate(Manifest(path=out / "jobs.yaml", jobs=jobs))
    assert [job.id for job in manifest.jobs] == ["with"]
    assert [problem.line for problem in manifest.problems] == [2]
    assert "knows only its" in manifest.problems[0].message


def test_generate_edit_and_batch_document_the_adapter_options():
    for command in ("generate", "edit", "batch"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        for option in ("--adapter", "--adapter-scale", "--adapter-reward"):
            assert option in result.stdout, (command, option)


def test_an_adapters_word_counts_as_one_token_of_the_prompt():
    """Before its adapter loads, "<sks>" splits into several tokens; the length warning counts it as one."""
    from dreamsmith.engine.presets import resolve_model
    from dreamsmith.engine.run import long_prompt_warning

    prior = load_prior(resolve_model("embedded:toyworld"))  # reads 6 tokens
    assert "7 tokens" in long_prompt_warning("a <sks> sphere", prior)
    assert long_prompt_warning("a <sks> sphere", prior, ["<sks>"]) is None
    assert "8 tokens" in long_prompt_warning("a red red red <sks> sphere", prior, ["<sks>"])


def test_a_multi_vector_tokens_words_count_as_its_vectors(tmp_path):
    """A [3, D] token is three words of the adapter and three tokens of the prompt's length."""
    from dreamsmith.engine.presets import resolve_model
    from dreamsmith.engine.run import long_prompt_warning

    save_file({"<tok>": torch.zeros(3, 32), "<one>": torch.zeros(32)}, str(tmp_path / EMBEDS_FILE))
    words = adapter_tokens(tmp_path)
    assert words == ["<one>", "<tok>", "<tok>_1", "<tok>_2"]
    prior = load_prior(resolve_model("embedded:toyworld"))  # reads 6 tokens
    assert long_prompt_warning("a <one> sphere", prior, words) is None
    assert "7 tokens" in long_prompt_warning("a <tok> sphere", prior, words)


def test_a_third_party_lora_of_another_width_is_refused_in_one_line(trained, tiny_sd_dir, tmp_path):
    """No adapter.json to compare fingerprints: the tensor shapes tell."""
    from safetensors.torch import load_file

    out, _ = trained
    folder = tmp_path / "wider"
    folder.mkdir()
    weights = load_file(str(out / LORA_FILE))
    save_file({key: torch.cat([value, value], dim=-1) if ".lora_A." in key else value
               for key, value in weights.items()}, str(folder / LORA_FILE))
    prior = load_prior(tiny_sd_dir)
    with pytest.raises(ConfigError, match="another base model"):
        load_adapter(prior, folder)
