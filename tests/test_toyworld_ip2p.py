"""The embedded editing model toyworld-ip2p: its edit pairs, its training mode, and the shipped folder."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dreamsmith.toyworld import world as tw
from dreamsmith.toyworld.data import render_caption
from dreamsmith.toyworld.edits import (
    HELD_OUT_EDITS,
    INSTRUCTIONS,
    apply_instruction,
    generate_edit_pairs,
    instruction_kind,
    training_edits,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "dreamsmith" / "models" / "toyworld-ip2p"


def _load_script():
    spec = importlib.util.spec_from_file_location("train_toyworld", ROOT / "tools" / "train_toyworld.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_instructions_change_one_word_of_the_caption() -> None:
    assert apply_instruction("a red cube", "make it blue") == "a blue cube"
    assert apply_instruction("a red cube", "make it orange") == "an orange cube"
    assert apply_instruction("an orange cone", "turn it into a sphere") == "an orange sphere"
    assert instruction_kind("a red cube", "make it red") == "identity"
    assert instruction_kind("a red cube", "turn it into a torus") == "shape"
    with pytest.raises(ValueError, match="not a toyworld instruction"):
        apply_instruction("a red cube", "make it fluffy")


def test_training_edits_hold_out_the_card_combinations_and_the_base_hold_outs() -> None:
    edits = training_edits()
    triples = [t for kind in edits.values() for t in kind]
    assert not {(s, i) for s, i, _ in triples} & set(HELD_OUT_EDITS)
    assert all(s in tw.TRAIN_CAPTIONS and t in tw.TRAIN_CAPTIONS for s, _, t in triples)
    assert all(apply_instruction(s, i) == t for s, i, t in triples)
    assert all(s == t for s, _, t in edits["identity"]) and all(s != t for s, _, t in edits["colour"])
    for source, instruction in HELD_OUT_EDITS:  # the card's combinations are real edits of training captions
        assert source in tw.TRAIN_CAPTIONS and instruction in INSTRUCTIONS
        assert apply_instruction(source, instruction) in tw.TRAIN_CAPTIONS
        assert instruction_kind(source, instruction) != "identity"


def test_edit_pairs_render_source_and_target_from_the_same_camera() -> None:
    pairs = generate_edit_pairs(12, resolution=16, seed=5)
    again = generate_edit_pairs(12, resolution=16, seed=5)
    assert torch.equal(pairs.source, again.source) and torch.equal(pairs.target, again.target)
    from dreamsmith.renderers.cameras import Cameras

    n = len(pairs)
    cameras = Cameras(pairs.c2w, torch.full((n,), tw.FOVY_DEG), torch.zeros(n), torch.zeros(n),
                      torch.full((n,), tw.CAMERA_DISTANCE), 16, 16)
    for k, (source, instruction, target) in enumerate(pairs.triples(torch.arange(n))):
        assert apply_instruction(source, instruction) == target
        for images, caption in ((pairs.source, source), (pairs.target, target)):
            truth = (render_caption(caption, cameras[k:k + 1])[0] * 255).round().to(torch.uint8)
            assert torch.equal(images[k], truth), (k, caption)


def test_edit_batch_pairs_source_target_instruction_and_camera() -> None:
    script = _load_script()
    pairs = generate_edit_pairs(40, resolution=16, seed=1)
    tokenizer = script.build_tokenizer(script.EDIT_WORDS, script.EDIT_TEXT_LENGTH)
    generator = torch.Generator().manual_seed(0)
    inputs, ids, camera = script.edit_training_batch(pairs, tokenizer, 24, generator, with_rays=True,
                                                     edit_dropout=0.0, camera_dropout=0.0)
    assert inputs.shape == (24, 12, 16, 16) and ids.shape == (24, 8) and camera.shape == (24, 16)
    labels = script.camera_condition(pairs.c2w)
    for b in range(24):
        (k,) = (labels == camera[b]).all(1).nonzero()[0].tolist()  # the pair it drew: every pair has its camera
        source, instruction, target = pairs.triples(torch.tensor([k]))[0]
        assert apply_instruction(source, instruction) == target
        assert torch.equal(inputs[b, :3], pairs.target[k].permute(2, 0, 1).float() / 127.5 - 1)
        assert torch.equal(inputs[b, 9:], pairs.source[k].permute(2, 0, 1).float() / 127.5 - 1)
        torch.testing.assert_close(inputs[b, 3:9], script.camera_rays(pairs.c2w[k:k + 1], 16)[0])
        assert tokenizer.decode(ids[b], skip_special_tokens=True) == instruction


def test_edit_batch_drops_text_image_and_both_five_percent_each() -> None:
    script = _load_script()
    pairs = generate_edit_pairs(16, resolution=8, seed=2)
    tokenizer = script.build_tokenizer(script.EDIT_WORDS, script.EDIT_TEXT_LENGTH)
    inputs, ids, _ = script.edit_training_batch(pairs, tokenizer, 8000, torch.Generator().manual_seed(3),
                                                edit_dropout=0.05, camera_dropout=0.0)
    empty = tokenizer([""], padding="max_length", max_length=8, return_tensors="pt").input_ids[0]
    no_text = (ids == empty).all(1)
    no_image = (inputs[:, 3:] == 0).flatten(1).all(1)
    for fraction in ((no_text & ~no_image), (~no_text & no_image), (no_text & no_image)):
        assert 0.04 < fraction.float().mean() < 0.06


def test_the_widened_unet_starts_as_its_base_bit_for_bit() -> None:
    script = _load_script()
    base = script.build_unet(16, (8, 16, 16), in_channels=9)
    torch.nn.init.normal_(base.conv_in.weight)  # any base, not only a fresh one
    widened = script.add_input_channels(copy.deepcopy(base), script.IMAGE_CHANNELS)
    assert widened.config.in_channels == 12 and not widened.conv_in.weight[:, 9:].any()
    generator = torch.Generator().manual_seed(0)
    x, source = torch.randn(3, 9, 16, 16, generator=generator), torch.rand(3, 3, 16, 16, generator=generator) * 2 - 1
    text, camera = torch.randn(3, 8, 64, generator=generator), torch.randn(3, 16, generator=generator)
    t = torch.tensor([5, 500, 990])
    with torch.no_grad():
        before = base(x, t, encoder_hidden_states=text, class_labels=camera).sample
        after = widened(torch.cat([x, source], 1), t, encoder_hidden_states=text, class_labels=camera).sample
    assert torch.equal(after, before)


def test_the_edit_tokenizer_keeps_the_caption_ids_and_reads_whole_instructions() -> None:
    script = _load_script()
    plain, edit = script.build_tokenizer(), script.build_tokenizer(script.EDIT_WORDS, script.EDIT_TEXT_LENGTH)
    assert all(edit.get_vocab()[word] == i for word, i in plain.get_vocab().items())
    for instruction in INSTRUCTIONS:
        tokens = edit.convert_ids_to_tokens(edit(instruction, truncation=True, max_length=8).input_ids)
        assert tokens == ["[BOS]", *instruction.split(), "[EOS]"], tokens


def test_edit_training_runs_resumes_and_exports_an_image_conditioned_delta(tmp_path: Path) -> None:
    from dreamsmith.guidance.loading import load_prior

    script = _load_script()
    base = tmp_path / "models" / "base"
    common = ["--resolution", "16", "--batch-size", "4", "--n-images", "32", "--threads", "1", "--camera-rays"]
    script.main(["--out", str(base), "--state-dir", str(tmp_path / "s0"), "--steps", "1", "--channels", "8,16,16",
                 *common])
    edit = tmp_path / "models" / "edit"
    argv = ["--out", str(edit), "--state-dir", str(tmp_path / "s1"), "--init-from", str(base), "--edit-pairs",
            "--checkpoint-every", "2", "--lr", "1e-2", *common]
    script.main([*argv, "--steps", "2"])
    log = script.main([*argv, "--steps", "3", "--resume"])
    assert log["edit_pairs"] and len(log["losses"]) == 3 and log["resumes"][0]["step"] == 2
    metadata = json.loads((edit / "dreamsmith.json").read_text())
    assert metadata["image_channels"] == 3 and metadata["known_prompts"] == list(INSTRUCTIONS)
    assert (edit / metadata["base"]).resolve() == base.resolve()
    assert not (edit / "scheduler").exists() and (edit / "tokenizer").is_dir()
    prior = load_prior(edit)
    assert (prior.image_channels, prior.ray_channels, prior.latent_channels) == (3, 6, 3)
    assert prior.unet.conv_in.weight[:, 9:].abs().sum() > 0  # the source channels trained


def test_bad_edit_options_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _load_script().parse_args(["--edit-pairs"])
    assert "--edit-pairs fine-tunes a single-view model" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="toyworld-ip2p is not trained in this checkout")
def test_the_shipped_model_is_detected_as_image_conditioned_and_loads() -> None:
    from dreamsmith.engine.presets import check_model_fits, model_image_channels
    from dreamsmith.errors import ConfigError
    from dreamsmith.guidance.loading import load_prior

    assert model_image_channels("embedded:toyworld-ip2p") == 3  # without torch, from the json files
    check_model_fits("embedded:toyworld-ip2p", "ip2p", "edit")
    with pytest.raises(ConfigError, match="image-conditioned"):
        check_model_fits("embedded:toyworld-ip2p", "sds", "generate")
    prior = load_prior(SHIPPED)
    assert (prior.image_channels, prior.ray_channels, prior.latent_channels) == (3, 6, 3)
    assert prior.camera_conditioning == "c2w16+rays" and prior.known_prompts == list(INSTRUCTIONS)
    base = load_prior(ROOT / "dreamsmith" / "models" / "toyworld")
    assert prior.scheduler.config.num_train_timesteps == base.scheduler.config.num_train_timesteps
    ids = prior.tokenizer("turn it into a cylinder").input_ids
    assert prior.tokenizer.unk_token_id not in ids and len(ids) == 7


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="toyworld-ip2p is not trained in this checkout")
def test_dreamsmith_edit_takes_the_shipped_model_by_default(tmp_path: Path) -> None:
    import yaml

    from dreamsmith.engine.config import to_dict
    from dreamsmith.engine.edit_config import EditRequest, edit_config
    from dreamsmith.engine.overrides import make_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(make_config("a red cube", steps=2)), sort_keys=False))
    (run / "report.json").write_text("{}")
    config, kind = edit_config(EditRequest(source=run, instruction="make it blue"))  # checks the model fits ip2p
    assert kind == "run" and config.model == "embedded:toyworld-ip2p" and config.prompt == "make it blue"
