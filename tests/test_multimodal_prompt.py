"""Multimodal prompts (KOSMOS-G's interface): "a <image:REF.png>" parsed without torch, the image's aligned words in
the placeholder's positions only, the text path untouched, and bad input in one line."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_cli_usage import run_cli as probe_cli
from test_generate import SMALL
from test_generate import run_cli as cli

from dreamsmith.engine.presets import embedded_model_path
from dreamsmith.errors import ConfigError, DreamsmithError
from dreamsmith.guidance.aligner import ImageAligner
from dreamsmith.guidance.conditioner_registry import build_conditioners
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.multimodal_prompt import add_image_words
from dreamsmith.guidance.prompt_check import check_prompt
from dreamsmith.guidance.textual_inversion import input_embeddings, word_embedding
from dreamsmith.prompt_images import image_refs, substitute_images, text_words
from dreamsmith.toyworld import world as tw


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "text.png").write_text("not an image")
    Image.fromarray(np.full((32, 32, 3), (128, 40, 180), np.uint8)).save(folder / "purple.png")
    return folder


@pytest.fixture
def prior():
    return load_prior(embedded_model_path("toyworld"))


def test_placeholders_parse_and_are_written_as_their_words():
    prompt = "a <image:ref.png> made of <IMAGE: my ref.png >"
    assert image_refs(prompt) == ["ref.png", "my ref.png"]
    assert text_words(prompt) == ["a", "made", "of"]
    assert substitute_images(prompt, {"ref.png": "<w0> <w1>"}) == "a <w0> <w1> made of <IMAGE: my ref.png >"
    assert image_refs("a red cube") == [] and substitute_images("a red cube", {"x": "y"}) == "a red cube"
    with pytest.raises(DreamsmithError, match="at character 3 has no closing '>'"):
        image_refs("a <image:ref.png")
    with pytest.raises(DreamsmithError, match="has no closing"):
        image_refs("a <image:a<image:b.png>")
    with pytest.raises(DreamsmithError, match="without a path"):
        image_refs("a <image: >")


def test_the_closed_vocabulary_check_accepts_the_placeholder_among_known_words():
    toyworld = SimpleNamespace(known_prompts=list(tw.ALL_CAPTIONS))
    check_prompt("a <image:ref.png>", toyworld)
    check_prompt("a purple <image:ref.png>", toyworld)
    with pytest.raises(DreamsmithError, match="'made of gold' around the prompt's images"):
        check_prompt("a <image:ref.png> made of gold", toyworld)


def test_a_prompt_without_images_encodes_exactly_as_before(prior):
    prompts = ["a red cube", "an orange cone", ""]
    before = prior.encode_prompts(prompts)
    add_image_words(prior, "ref.png", torch.randn(2, input_embeddings(prior).embedding_dim))
    assert torch.equal(prior.encode_prompts(prompts), before)


def test_only_the_placeholder_positions_change_at_the_input_layer(prior):
    words = torch.randn(2, input_embeddings(prior).embedding_dim)
    add_image_words(prior, "ref.png", words)
    seen = []
    handle = input_embeddings(prior).register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    try:
        prior.encode_prompts(["a <image:ref.png>", "a red cube"])
    finally:
        handle.remove()
    image, text = seen[0]
    changed = (image != text).any(-1)
    assert changed.tolist() == [False, False, True, True, False, False]  # [BOS] a <image> <image> [EOS] [PAD]
    assert torch.equal(image[2:4], words)


def stub_aligner(folder, words: torch.Tensor, image_dim: int = 128):
    """An aligner folder whose aligner returns ``words [K, D]`` for any image (its last layer a bias only), with
    toyworld-ip's image encoder beside it."""
    aligner = ImageAligner(image_dim, words.shape[1], words.shape[0])
    with torch.no_grad():
        aligner.mlp[-1].weight.zero_()
        aligner.mlp[-1].bias.copy_(words.flatten())
    aligner.save(folder / "aligner")
    (folder / "image_encoder").symlink_to(embedded_model_path("toyworld-ip") / "image_encoder")
    return folder / "aligner"


def test_an_aligner_returning_the_words_of_red_cube_makes_the_text_prompt_exactly(prior, images, tmp_path):
    words = torch.stack([word_embedding(prior, "red"), word_embedding(prior, "cube")])
    aligner = stub_aligner(tmp_path, words)
    spec = {"name": "multimodal_prompt", "aligner": str(aligner), "refs": ["purple.png"],
            "images": [str(images / "purple.png")]}
    build_conditioners([spec], prior, prompt="a <image:purple.png>")
    image, text = prior.encode_prompts(["a <image:purple.png>", "a red cube"])
    assert torch.equal(image, text)  # hence the same UNet call: exactly text SDS


def test_an_aligner_for_another_text_encoder_is_refused_in_one_line(prior, images, tmp_path):
    aligner = stub_aligner(tmp_path, torch.zeros(2, 32))
    spec = {"name": "multimodal_prompt", "aligner": str(aligner), "refs": ["p.png"],
            "images": [str(images / "purple.png")]}
    with pytest.raises(ConfigError, match="writes 32-wide words, the model's text encoder reads 64"):
        build_conditioners([spec], prior)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a <image:missing.png>"], "<image:missing.png> missing.png does not exist"),
        (["a <image:text.png>"], "text.png is not a readable image"),
        (["a <image:purple.png"], "has no closing '>'"),
        (["a <image:purple.png>", "--model", "."], "needs an aligner for ., which has none"),
    ],
)
def test_bad_multimodal_prompts_are_one_line_before_torch_loads(images, args, message, monkeypatch):
    monkeypatch.chdir(images)
    result, stderr = probe_cli("generate", *args)
    assert result == {"code": 1, "torch": False, "diffusers": False}, stderr
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) <= 2


def test_a_multimodal_prompt_makes_an_asset_and_unknown_words_around_it_are_one_line(images, tmp_path):
    out = tmp_path / "run"
    result = cli("generate", "a <image:purple.png>", "--steps", "2", "--out", str(out), "--quiet", *SMALL, cwd=images)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["prompt"] == "a <image:purple.png>"
    spec = config["stages"][0]["guidance"]["conditioners"][-1]
    assert spec["name"] == "multimodal_prompt" and spec["refs"] == ["purple.png"]
    assert spec["images"] == [str((images / "purple.png").resolve())]
    assert spec["aligner"] == str((embedded_model_path("toyworld-ip") / "aligner").resolve())
    gold = cli("generate", "a <image:purple.png> made of gold", "--steps", "2", "--out", str(tmp_path / "gold"),
               "--quiet", *SMALL, cwd=images)
    assert gold.returncode == 1 and "'made of gold' around the prompt's images" in gold.stderr
    assert "Traceback" not in gold.stderr and len(gold.stderr.strip().splitlines()) <= 2


def aligner_net_state(layout) -> dict[str, torch.Tensor]:
    """A synthetic KOSMOS-G checkpoint's aligner in the published layout (``aligner.`` keys, training parts too)."""
    from dreamsmith.guidance.kosmos_g import expected_keys

    state = {f"aligner.{key}": torch.zeros(layout.width) for key in expected_keys(layout)}
    state["aligner.encoder_query"] = torch.zeros(layout.queries, layout.width)
    state["aligner.encoder_proj.embed_tokens.weight"] = torch.zeros(layout.width, layout.mllm_dim)
    state["aligner.decoder_query"] = torch.zeros(8, layout.width)  # the reconstruction branch, training only
    state["aligner.decoder_proj.output_projection.weight"] = torch.zeros(layout.mllm_dim, layout.width)
    state["gpt_model.decoder.layers.0.fc1.weight"] = torch.zeros(2, 2)  # the MLLM's, not the aligner's
    return state


def test_the_published_aligner_net_layout_reads_and_names_what_does_not_fit():
    from dreamsmith.errors import ModelLoadError
    from dreamsmith.guidance.kosmos_g import AlignerNetLayout, read_aligner_net

    layout = AlignerNetLayout(mllm_dim=24, queries=77, width=16, encoder_layers=2, decoder_layers=3, subln=True)
    read, tensors = read_aligner_net(aligner_net_state(layout))
    assert read == layout
    assert "encoder.layers.2.encoder_attn.q_proj.weight" in tensors and "decoder_query" not in tensors
    broken = aligner_net_state(layout)
    del broken["aligner.encoder.layers.1.encoder_attn_layer_norm.bias"]
    broken["aligner.encoder.layers.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelLoadError, match=r"1 missing \(encoder.layers.1.encoder_attn_layer_norm.bias\), 1 "
                                             r"unexpected \(encoder.layers.0.extra.weight\)"):
        read_aligner_net(broken)
    with pytest.raises(ModelLoadError, match="not a KOSMOS-G AlignerNet state dict: no encoder_query"):
        read_aligner_net({"proj.weight": torch.zeros(1)})
