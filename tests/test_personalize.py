"""`dreamsmith personalize`: the methods' invariants on a tiny model, resume, and bad input in one line with
nothing half-written."""

import math
import random

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_generate import assert_clean_failure, run_cli

from dreamsmith.engine.personalize import PersonalizeConfig, personalize
from dreamsmith.engine.personalize.run import CLASS_CACHE, work_folder
from dreamsmith.engine.personalize.trainer import Personalizer
from dreamsmith.engine.run import Progress
from dreamsmith.errors import ConfigError, DreamsmithError
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.math import dco_loss, prior_preservation_loss, reward_guided_eps
from dreamsmith.guidance.textual_inversion import add_token, read_embeddings, word_embedding


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subject")
    for index in range(3):
        Image.new("RGB", (8, 8), (255, 105, 180 - 20 * index)).save(folder / f"{index}.png")
    return folder


def _images(n=3):
    return torch.rand(n, 8, 8, 3, generator=torch.Generator().manual_seed(2))


def _config(method, **extra):
    return PersonalizeConfig(method=method, class_word="a", **{"steps": 2, "sample_steps": 2, **extra})


def _eps(prior, prompt, conditioners=()):
    z_t = torch.randn(2, prior.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    return prior.predict_noise(z_t, torch.tensor([200, 800]), prior.encode_prompts([prompt]), None, conditioners)


def test_a_token_with_an_existing_words_embedding_gives_identical_prompt_embeddings(tiny_sd_dir):
    prior = load_prior(tiny_sd_dir)
    add_token(prior, "<sks>", word_embedding(prior, "b"))
    assert torch.equal(prior.encode_prompts(["x <sks> y"]), prior.encode_prompts(["x b y"]))
    add_token(prior, "<other>", word_embedding(prior, "c"))
    assert not torch.equal(prior.encode_prompts(["x <other> y"]), prior.encode_prompts(["x b y"]))


def test_lora_at_init_at_scale_zero_and_disabled_equals_the_base_bit_for_bit(tiny_sd_dir):
    base = _eps(load_prior(tiny_sd_dir), "a b")
    prior = load_prior(tiny_sd_dir)
    trainer = Personalizer(prior, _config("lora", learning_rate=0.1), _images())
    assert torch.equal(_eps(prior, "a b", trainer.conditioners()), base)  # at init: B = 0
    trainer.step(torch.Generator().manual_seed(0), random.Random(0))
    assert not torch.equal(_eps(prior, "a b", trainer.conditioners()), base)  # trained: it changes the output
    assert torch.equal(_eps(prior, "a b", trainer.conditioners(0.0)), base)
    assert torch.equal(_eps(prior, "a b"), base)  # not named by the call: disabled


def test_textual_inversion_learns_only_the_new_row(tiny_sd_dir):
    prior = load_prior(tiny_sd_dir)
    before = prior.text_encoder.get_input_embeddings().weight.detach().clone()
    trainer = Personalizer(prior, _config("textual-inversion", learning_rate=0.1), _images())
    unet_before = {k: v.clone() for k, v in prior.unet.state_dict().items()}
    trainer.step(torch.Generator().manual_seed(0), random.Random(0))
    after = prior.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(after[: before.shape[0]], before)
    assert not torch.equal(after[trainer.token_id], word_embedding(load_prior(tiny_sd_dir), "a"))
    assert all(torch.equal(v, unet_before[k]) for k, v in prior.unet.state_dict().items())


def test_dco_loss_at_init_is_log_2(tiny_sd_dir):
    prior = load_prior(tiny_sd_dir)
    trainer = Personalizer(prior, _config("dco"), _images())
    loss = trainer.loss(torch.Generator().manual_seed(0), random.Random(0))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    error = torch.tensor([0.3, 0.1])
    assert dco_loss(error, error - 0.01, 100.0).item() == pytest.approx(math.log1p(math.e), rel=1e-6)


def test_prior_preservation_weight_zero_is_the_plain_loss(tiny_sd_dir):
    class_images = _images(4)
    losses = []
    for method, weight in (("dreambooth", 0.0), ("lora", 1.0), ("dreambooth", 1.0)):
        prior = load_prior(tiny_sd_dir)
        trainer = Personalizer(prior, _config(method, prior_weight=weight), _images(), class_images)
        losses.append(trainer.loss(torch.Generator().manual_seed(0), random.Random(0)).item())
    assert losses[0] == losses[1] != losses[2]
    error, class_error = torch.tensor([0.2, 0.4]), torch.tensor([1.0, 3.0])
    assert prior_preservation_loss(error, class_error, 0.0).item() == pytest.approx(0.3)
    assert prior_preservation_loss(error, class_error, 0.5).item() == pytest.approx(1.3)


def test_reward_guidance_weight_zero_is_classifier_free_guidance():
    eps_u, eps_c, eps_base = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(reward_guided_eps(eps_u, eps_c, eps_base, 5.0, 0.0), eps_u + 5.0 * (eps_c - eps_u))
    assert torch.allclose(reward_guided_eps(eps_u, eps_c, eps_base, 1.0, 2.0), eps_c + 2.0 * (eps_c - eps_base))


class StopAt(Progress):
    def __init__(self, step):
        self.stop = step

    def step(self, step, loss, logs):
        if step == self.stop:
            raise KeyboardInterrupt


def test_resume_after_a_stop_matches_an_uninterrupted_run(subject, tiny_sd_dir, tmp_path):
    config = _config("dreambooth", steps=4, checkpoint_every=2, class_images=2, learning_rate=0.05)
    whole = personalize([subject], config, tmp_path / "whole", prior=load_prior(tiny_sd_dir))
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        personalize([subject], config, out, prior=load_prior(tiny_sd_dir), progress=StopAt(2))
    assert not out.exists() and (work_folder(out) / "checkpoint.pt").exists()
    with pytest.raises(DreamsmithError, match="--resume"):
        personalize([subject], config, out, prior=load_prior(tiny_sd_dir))
    resumed = personalize([subject], config, out, resume=True, prior=load_prior(tiny_sd_dir))
    assert resumed.losses == whole.losses
    assert torch.equal(read_embeddings(out / "learned_embeds.safetensors")["<sks>"],
                       read_embeddings(tmp_path / "whole" / "learned_embeds.safetensors")["<sks>"])
    resumed_lora = load_file(str(out / "pytorch_lora_weights.safetensors"))
    whole_lora = load_file(str(tmp_path / "whole" / "pytorch_lora_weights.safetensors"))
    assert resumed_lora.keys() == whole_lora.keys()
    assert all(torch.equal(resumed_lora[key], whole_lora[key]) for key in whole_lora)
    assert not work_folder(out).exists()
    assert len(list((tmp_path / CLASS_CACHE).iterdir())) == 1  # sampled once, reused by the second run


def test_existing_adapter_is_kept_unless_overwrite(subject, tiny_sd_dir, tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DreamsmithError, match="--overwrite"):
        personalize([subject], _config("textual-inversion"), out, prior=load_prior(tiny_sd_dir))
    assert (out / "keep.txt").read_text() == "mine"
    personalize([subject], _config("textual-inversion"), out, overwrite=True, prior=load_prior(tiny_sd_dir))
    assert not (out / "keep.txt").exists() and (out / "learned_embeds.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary or old folder left


def test_mixed_sizes_are_resized_with_a_message(tiny_sd_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "a.png")
    Image.new("RGBA", (16, 12), (0, 0, 255, 0)).save(folder / "b.png")  # transparent: white
    messages = []

    class Messages(Progress):
        def message(self, text):
            messages.append(text)

    personalize([folder], _config("textual-inversion"), tmp_path / "out", prior=load_prior(tiny_sd_dir),
                progress=Messages())
    assert any("b.png is 16x12" in m and "resized" in m for m in messages)


def test_bad_input_is_one_line_with_nothing_written(tiny_sd_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    good = tmp_path / "good"
    good.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(good / "a.png")
    out = tmp_path / "adapter"
    common = ["--model", str(tiny_sd_dir), "--out", str(out), "--steps", "1", "--class-word", "a"]
    assert_clean_failure(run_cli("personalize", str(empty), *common), "no images")
    assert_clean_failure(run_cli("personalize", str(broken), *common), "is not a readable image")
    assert_clean_failure(run_cli("personalize", str(tmp_path / "nowhere"), *common), "does not exist")
    assert_clean_failure(run_cli("personalize", str(good), *common, "--token", "a"), "already in the model")
    assert_clean_failure(run_cli("personalize", str(good), *common, "--method", "magic"), "--method")
    assert_clean_failure(run_cli("personalize", str(good), "--model", str(tiny_sd_dir), "--out", str(out)),
                         "--class-word")
    assert_clean_failure(run_cli("personalize", str(good), *common, "--resume"), "nothing to resume")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "empty", "good"]
    with pytest.raises(ConfigError, match="already in the model's vocabulary"):
        add_token(load_prior(tiny_sd_dir), "a", word_embedding(load_prior(tiny_sd_dir), "b"))


@pytest.mark.slow
def test_personalize_cli_writes_an_adapter_generate_can_use(tiny_sd_dir, subject, tmp_path):
    out = tmp_path / "adapter"
    result = run_cli("personalize", str(subject), "--model", str(tiny_sd_dir), "--out", str(out), "--steps", "3",
                     "--class-word", "a", "--method", "dco", "--quiet")
    assert result.returncode == 0, result.stderr
    assert {"adapter.json", "learned_embeds.safetensors", "pytorch_lora_weights.safetensors", "README.md",
            "loss.png", "samples.png"} <= {p.name for p in out.iterdir()}
