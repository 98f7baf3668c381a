"""Presets, overrides and their errors."""

import pytest

from dreamsmith.engine.config import parse_override
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.presets import preset_for_model, preset_names
from dreamsmith.errors import ConfigError


def preset_model(name: str, tiny_mv_dir) -> str | None:
    """The model a preset resolves with here: its own, or a tiny four-view one where its own is not a
    model folder yet (MVDream's checkpoint needs converting)."""
    return str(tiny_mv_dir) if name == "mvdream" else None


def test_every_preset_resolves(monkeypatch, tiny_mv_dir):
    # The GPU presets' high-resolution NeRF stages (ProlificDreamer's and DreamFlow's 256-512 px renders)
    # need more than this machine's budget: resolve them under an ample one, and check that the machine's
    # own budget either fits a preset or refuses it in one line that names the knobs.
    for name in preset_names():
        try:
            make_config("a red cube", preset=name, model=preset_model(name, tiny_mv_dir))
        except ConfigError as error:
            assert "\n" not in str(error) and "camera.resolution" in str(error) and "--memory-budget" in str(error)
    monkeypatch.setenv("DREAMSMITH_MEMORY_BUDGET", "1T")
    for name in preset_names():
        config = make_config("a red cube", preset=name, model=preset_model(name, tiny_mv_dir))
        assert config.preset == name and config.stages and all(s.steps > 0 for s in config.stages)
    for name in ("toy", "toy-mesh", "toy-vsd", "toy-dreamflow", "toy-mv", "dreamfusion", "magic3d"):
        monkeypatch.setenv("DREAMSMITH_MEMORY_BUDGET", "4G")
        make_config("a red cube", preset=name)  # the presets a CPU runs fit in 4 GB


def test_overrides_reach_every_stage_or_one_named_stage():
    config = make_config("x", preset="dreamfusion", overrides=["guidance.guidance_scale=50", "camera.resolution=32"])
    assert config.stages[0].guidance["guidance_scale"] == 50
    assert config.stages[0].camera.resolution == 32
    overrides = ["coarse.loss.lambda_opaque=[0, 0.0, 1.0, 100]", "nerf.hash_grid.n_levels=8"]
    config = make_config("x", preset="dreamfusion", overrides=overrides)
    assert config.stages[0].loss.lambda_opaque == [0, 0.0, 1.0, 100]
    assert config.stages[0].nerf.hash_grid.n_levels == 8
    config = make_config("x", preset="dreamfusion", overrides=["seed=7", "export.isosurface_resolution=64"], steps=12)
    assert config.seed == 7 and config.export.isosurface_resolution == 64 and config.stages[-1].steps == 12


@pytest.mark.parametrize(
    ("override", "named", "suggested"),
    [
        ("guidance.guidanse_scale=3", "guidance.guidanse_scale", "guidance.guidance_scale"),
        ("camera.resolutoin=3", "camera.resolutoin", "camera.resolution"),
        ("sed=3", "sed", "seed"),
        ("nerf.hash_grid.n_level=3", "nerf.hash_grid.n_level", "nerf.hash_grid.n_levels"),
    ],
)
def test_unknown_key_names_itself_and_the_nearest_valid_key(override, named, suggested):
    with pytest.raises(ConfigError) as error:
        make_config("x", preset="dreamfusion", overrides=[override])
    message = str(error.value)
    assert f"'{named}'" in message and f"'{suggested}'" in message


def test_bad_values_and_steps_are_refused():
    with pytest.raises(ConfigError, match="steps"):
        make_config("x", preset="dreamfusion", steps=-1)
    with pytest.raises(ConfigError, match="camera.resolution"):
        make_config("x", preset="dreamfusion", overrides=["camera.resolution=big"])
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("x", preset="dreamfussion")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("justakey")


@pytest.mark.parametrize(
    "override",
    [
        "guidance.guidance_scale=[0,7.5,2.5]",
        "loss.lambda_opaque=lots",
        "optim.lr_mlp=[0,1,2,x]",
        "guidance.grad_clip=true",
    ],
)
def test_malformed_schedules_are_refused_when_the_config_resolves(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"stages.0.{key}' must be a number or \\[start_step"):
        make_config("x", preset="toy", overrides=[override])


def test_schedules_and_plain_numbers_are_accepted_for_scheduled_fields():
    overrides = ["guidance.guidance_scale=[0,7.5,2.5,400]", "guidance.grad_clip=null"]
    config = make_config("x", preset="toy", overrides=overrides)
    assert config.stages[0].guidance["guidance_scale"] == [0, 7.5, 2.5, 400]
    assert make_config("x", preset="toy", overrides=["loss.lambda_opaque=2"]).stages[0].loss.lambda_opaque == 2


def test_default_preset_follows_the_model(tmp_path):
    assert preset_for_model(None) == "toy"
    assert preset_for_model("stabilityai/stable-diffusion-2-1-base") == "dreamfusion"
    (tmp_path / "model_index.json").write_text("{}")
    assert preset_for_model(str(tmp_path)) == "dreamfusion-if"
    (tmp_path / "vae").mkdir()
    assert preset_for_model(str(tmp_path)) == "dreamfusion"
