"""Shared fixtures: tiny random diffusers models, saved like real ones and loaded by the real loader.

Builders (plain functions, usable from any test) write diffusers folders; session fixtures build
each one once into a temporary directory:

- ``tiny_sd_dir`` / ``tiny_sd_prior``: Stable-Diffusion-shaped (AutoencoderKL, UNet2DConditionModel,
  CLIPTextModel + CLIPTokenizer, DDIMScheduler), ε-prediction; images 32², latents 4 × 4 × 4.
- ``tiny_sd_vpred_dir`` / ``tiny_sd_vpred_prior``: the same, v-prediction.
- ``tiny_controlnet_dir``: a ControlNet for ``tiny_sd_dir`` (``from_unet`` with its zero convolutions
  made non-zero, so it changes the prediction); ``tiny_controlnet_other_dir``: one for another base
  model (wider blocks).
- ``tiny_mv_dir``: ``tiny_sd_dir`` made a four-view MVDream-style model: its UNet reads MVDream's camera
  through a projection class embedding, and its ``dreamsmith.json`` names the multi-view attention.
- ``tiny_ip2p_dir``: ``tiny_sd_dir`` made InstructPix2Pix-shaped: its UNet reads 8 channels (z_t and the
  source image's latents), every weight random.
- ``tiny_pixel_dir`` / ``tiny_pixel_prior``: pixel space (no VAE, DeepFloyd-IF-like), 3-channel UNet
  at 8², camera-conditioned through ``class_labels`` (a ``dreamsmith.json`` declaring ``c2w16``).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

TEXT_LENGTH = 16
TEXT_DIM = 32
PIXEL_METADATA = {
    "camera_conditioning": "c2w16",
    "camera_distance": 2.0,
    "resolution": 8,
    "fovy_deg": 40.0,
    "elevation_range": [-10.0, 45.0],
    "known_prompts": ["a red cube", "a blue sphere"],
}


def pytest_configure(config: pytest.Config) -> None:
    # Test models are tiny: intra-op threads buy nothing, and OpenMP threads spin-waiting on a shared
    # CPU (background jobs, parallel test workers) made ControlNet calls ~50x slower here.
    torch.set_num_threads(1)


def write_tiny_vocab(folder: Path) -> Path:
    """A character-level CLIP BPE vocabulary (``vocab.json`` + ``merges.txt``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ",.!?'-")
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tiny_text_components(folder: Path) -> tuple[torch.nn.Module, object]:
    """A 2-layer CLIP text encoder (width 32) and its tokenizer (max length 16)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(
        write_tiny_vocab(folder / "vocab"), model_max_length=TEXT_LENGTH
    )
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config), tokenizer


def tiny_unet(sample_size: int, channels: int, cross_attention_dim: int = TEXT_DIM, out_channels: int | None = None,
              **extra: object) -> torch.nn.Module:
    """A 2-level UNet2DConditionModel with cross-attention to width-32 text embeddings (or as given)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=out_channels or channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        **extra,
    )


def tiny_vae(**extra: object) -> torch.nn.Module:
    """A 4-level AutoencoderKL with 4 latent channels and 4 channels per block, 32 px images (8x down)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
        **extra,
    )


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Save a tiny Stable-Diffusion-shaped pipeline (safetensors) into ``folder``; returns it."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = tiny_vae()
        unet = tiny_unet(sample_size=4, channels=4)
        text_encoder, tokenizer = tiny_text_components(folder.parent / f"{folder.name}-src")
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


MV_METADATA = {"attention": "multiview", "views_per_group": 4, "camera_conditioning": "mvdream"}


def build_tiny_mv(folder: Path, seed: int = 0) -> Path:
    """``build_tiny_sd`` with a camera-conditioned UNet (projection class embedding of 16 numbers) and a
    ``dreamsmith.json`` naming four-view multi-view attention and MVDream's camera input."""
    build_tiny_sd(folder, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        unet = tiny_unet(sample_size=4, channels=4, class_embed_type="projection",
                         projection_class_embeddings_input_dim=16)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    (folder / "dreamsmith.json").write_text(json.dumps(MV_METADATA))
    return folder


def build_tiny_ip2p(folder: Path, seed: int = 0) -> Path:
    """``build_tiny_sd`` with an InstructPix2Pix-shaped UNet (8 input channels: z_t, then the source image's
    latents; random weights on both) and diffusers' InstructPix2Pix pipeline class in model_index.json."""
    build_tiny_sd(folder, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 2)
        unet = tiny_unet(sample_size=4, channels=8, out_channels=4)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**index, "_class_name": "StableDiffusionInstructPix2PixPipeline"}))
    return folder


def build_tiny_controlnet(folder: Path, sd_folder: Path | None, seed: int = 0) -> Path:
    """Save a tiny ControlNet into ``folder``: from ``sd_folder``'s UNet with random zero convolutions,
    or (None) a random one for another base model, whose blocks are twice as wide."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if sd_folder is None:
            controlnet = ControlNetModel(
                in_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), block_out_channels=(16, 32),
                layers_per_block=1, norm_num_groups=4, cross_attention_dim=TEXT_DIM, attention_head_dim=2,
            )
        else:
            controlnet = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(sd_folder / "unet"))
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out]
        with torch.no_grad():
            for conv in zero_convs:
                conv.weight.normal_(0.0, 0.2)
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_pixel(folder: Path, prediction_type: str = "epsilon", seed: int = 0, rays: bool = False) -> Path:
    """Save a tiny pixel-space, camera-conditioned pipeline (no VAE) into ``folder``; returns it.
    ``rays``: the camera also as six Plücker ray input channels ("c2w16+rays")."""
    import diffusers
    from diffusers import DDPMScheduler

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = tiny_unet(
            sample_size=8, channels=9 if rays else 3, class_embed_type="projection",
            projection_class_embeddings_input_dim=16, out_channels=3,
        )
        text_encoder, tokenizer = tiny_text_components(folder.parent / f"{folder.name}-src")
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    for name, component in [("unet", unet), ("text_encoder", text_encoder), ("tokenizer", tokenizer)]:
        component.save_pretrained(folder / name)
    scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "DiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    metadata = {**PIXEL_METADATA, "camera_conditioning": "c2w16+rays"} if rays else PIXEL_METADATA
    (folder / "dreamsmith.json").write_text(json.dumps(metadata, indent=2))
    return folder


@pytest.fixture
def pickled_sd_dir(tiny_sd_dir: Path, tmp_path: Path) -> Path:
    """The tiny SD with its UNet weights as a pickled ``.bin`` only."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "pickled-sd"
    shutil.copytree(tiny_sd_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    return folder


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_mv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mv(tmp_path_factory.mktemp("models") / "tiny-mv")


@pytest.fixture(scope="session")
def tiny_ip2p_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ip2p(tmp_path_factory.mktemp("models") / "tiny-ip2p")


@pytest.fixture(scope="session")
def tiny_controlnet_dir(tiny_sd_dir: Path) -> Path:
    return build_tiny_controlnet(tiny_sd_dir.parent / "tiny-controlnet", tiny_sd_dir)


@pytest.fixture(scope="session")
def tiny_controlnet_other_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_controlnet(tmp_path_factory.mktemp("models") / "tiny-controlnet-other", None)


@pytest.fixture(scope="session")
def tiny_sd_vpred_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-vpred", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_pixel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixel(tmp_path_factory.mktemp("models") / "tiny-pixel")


@pytest.fixture(scope="session")
def tiny_pixel_rays_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pixel(tmp_path_factory.mktemp("models") / "tiny-pixel-rays", rays=True)


@pytest.fixture(scope="session")
def tiny_sd_prior(tiny_sd_dir: Path):
    from dreamsmith.guidance.loading import load_prior

    return load_prior(tiny_sd_dir)


@pytest.fixture(scope="session")
def tiny_sd_vpred_prior(tiny_sd_vpred_dir: Path):
    from dreamsmith.guidance.loading import load_prior

    return load_prior(tiny_sd_vpred_dir)


@pytest.fixture(scope="session")
def tiny_pixel_prior(tiny_pixel_dir: Path):
    from dreamsmith.guidance.loading import load_prior

    return load_prior(tiny_pixel_dir)


def tiny_sdxl_unet(refiner: bool) -> torch.nn.Module:
    """:func:`tiny_unet` with SDXL's text_time added embedding (6 ids, or the refiner's 5), pooled width 32,
    attending to both encoders' text (the refiner's one)."""
    ids = 5 if refiner else 6
    return tiny_unet(4, 4, cross_attention_dim=TEXT_DIM if refiner else 2 * TEXT_DIM, addition_embed_type="text_time",
                     addition_time_embed_dim=8, projection_class_embeddings_input_dim=ids * 8 + TEXT_DIM)


def build_tiny_sdxl(folder: Path, refiner: bool = False, seed: int = 0) -> Path:
    """Save a tiny SDXL-shaped pipeline (base: two CLIP encoders, the second with a projection; refiner:
    the second only, aesthetic-score time ids) into ``folder`` with diffusers' own pipeline classes."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextModelWithProjection

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = tiny_vae(scaling_factor=0.13025)
        unet = tiny_sdxl_unet(refiner)
        text_encoder, tokenizer = tiny_text_components(folder.parent / f"{folder.name}-src")
        config = dict(text_encoder.config.to_dict(), projection_dim=TEXT_DIM)
        text_encoder_2 = CLIPTextModelWithProjection(type(text_encoder.config)(**config))
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="leading")
    if refiner:
        pipeline = StableDiffusionXLImg2ImgPipeline(
            vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer,
            unet=unet, scheduler=scheduler, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        )
    else:
        pipeline = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
        )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_refiner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl-refiner", refiner=True)
