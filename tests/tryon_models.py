"""Tiny random try-on models written in their published folder layouts (for the try-on tests)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import TEXT_DIM, build_tiny_sdxl, tiny_unet

VISION_DIM = 32


def tiny_tryon_unet(in_channels: int = 13) -> torch.nn.Module:
    """A tiny SDXL-shaped inpainting UNet (text_time added embedding, both encoders' text) reading
    ``in_channels``: latents, mask, masked-image latents and, with 13, the pose image's latents."""
    return tiny_unet(4, in_channels, out_channels=4, cross_attention_dim=2 * TEXT_DIM, addition_embed_type="text_time",
                     addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM)


def build_tiny_idm_vton(folder: Path, seed: int = 0) -> Path:
    """yisol/IDM-VTON's layout, every weight random: SDXL's vae/text encoders/tokenizers/scheduler, ``unet``
    (13 channels, ``encoder_hid_proj.*`` resampler, ``<attn2>.processor.to_k_ip/to_v_ip``), ``unet_encoder``
    (the GarmentNet, same blocks) and ``image_encoder`` (CLIP vision with projection)."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from dreamsmith.tryon.image_prompt import Resampler

    build_tiny_sdxl(folder, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 5)
        unet = tiny_tryon_unet()
        garment_unet = tiny_unet(4, 4, cross_attention_dim=2 * TEXT_DIM)
        resampler = Resampler(dim=64, depth=1, inner=64, num_queries=4, embedding_dim=VISION_DIM,
                              output_dim=2 * TEXT_DIM)
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=VISION_DIM, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, projection_dim=VISION_DIM))
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        state = load_file(weights)
        for name in unet.attn_processors:
            module = unet.get_submodule(name.removesuffix(".processor"))
            if module.is_cross_attention:
                for key in ("to_k_ip", "to_v_ip"):
                    state[f"{name}.{key}.weight"] = torch.randn(module.to_q.out_features, 2 * TEXT_DIM) * 0.2
        state.update({f"encoder_hid_proj.{key}": value for key, value in resampler.state_dict().items()})
        save_file(state, weights)
        config_file = folder / "unet" / "config.json"
        config = json.loads(config_file.read_text())
        config.update(encoder_hid_dim_type="ip_image_proj", encoder_hid_dim=VISION_DIM)
        config_file.write_text(json.dumps(config))
        garment_unet.save_pretrained(folder / "unet_encoder", safe_serialization=True)
        vision.save_pretrained(folder / "image_encoder", safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "TryonPipeline"}))
    return folder


def tiny_stableviton_state(zero_warps: bool = True, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """A StableVITON checkpoint in the published LDM layout on a tiny UNet (``ldm_reference``'s, 13 input
    channels): ``model.diffusion_model.*`` with ``warp_flow_blks``/``warp_zero_convs`` for the decoder blocks
    above the lowest level, ``control_model.*`` (the encoder copy and ``cond_first_block``). Returns the
    tensors and the ``unet_config.params``."""
    from ldm_reference import TINY_PARAMS, _transformer, random_state

    params = {**TINY_PARAMS, "in_channels": 13}
    base = {k: v for k, v in random_state(params, seed).items() if not k.startswith("camera_embed")}
    control = {k: v for k, v in random_state(params, seed + 1).items()
               if k.startswith(("input_blocks", "middle_block", "time_embed"))}
    generator = torch.Generator().manual_seed(seed + 2)
    state = {f"model.diffusion_model.{k}": v for k, v in base.items()}
    state.update({f"control_model.{k}": v for k, v in control.items()})
    width = params["model_channels"]
    state["control_model.cond_first_block.0.weight"] = torch.randn(width, 4, 3, 3, generator=generator) * 0.1
    state["control_model.cond_first_block.0.bias"] = torch.zeros(width)
    # decoder blocks above the lowest level (tiny: 2 levels, 1 res block): h of 64 then 32 channels, reading
    # the encoder's level-0 outputs (32 channels)
    for index, (channels, context) in enumerate([(2 * width, width), (width, width)]):
        shapes: dict[str, tuple[int, ...]] = {}
        _transformer(shapes, f"warp_flow_blks.{index}", channels, context, 1)
        for key, shape in shapes.items():
            is_norm = key.endswith(".weight") and len(shape) == 1
            value = torch.randn(shape, generator=generator)
            state[f"model.diffusion_model.{key}"] = 1 + 0.1 * value if is_norm else value * 0.2
        conv = torch.zeros(channels, channels, 1, 1) if zero_warps else torch.randn(channels, channels, 1, 1,
                                                                                   generator=generator) * 0.2
        state[f"model.diffusion_model.warp_zero_convs.{index}.weight"] = conv
        state[f"model.diffusion_model.warp_zero_convs.{index}.bias"] = torch.zeros(channels)
    return state, {k: v for k, v in params.items() if k != "camera_dim"}


TINY_VAE = {"z_channels": 4, "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
            "double_z": True, "resolution": 32, "attn_resolutions": [], "dropout": 0.0}
"""A tiny ``first_stage_config.params.ddconfig`` (LDM's AutoencoderKL; 32 channels for its group norms)."""


def ldm_vae_layout(dd: dict) -> dict[str, tuple[int, ...]]:
    """The shapes of an LDM ``AutoencoderKL``'s tensors (``encoder.down.{i}.block.{j}``, ``mid.attn_1`` as 1x1
    convolutions, ``decoder.up.{i}``, ``quant_conv``, ``post_quant_conv``) for ``ddconfig`` ``dd``."""
    from ldm_reference import _conv, _norm

    shapes: dict[str, tuple[int, ...]] = {}
    ch, mult, blocks, z = dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"]

    def block(name: str, n_in: int, n_out: int) -> None:
        _norm(shapes, f"{name}.norm1", n_in)
        _conv(shapes, f"{name}.conv1", n_in, n_out)
        _norm(shapes, f"{name}.norm2", n_out)
        _conv(shapes, f"{name}.conv2", n_out, n_out)
        if n_in != n_out:
            _conv(shapes, f"{name}.nin_shortcut", n_in, n_out, kernel=1)

    def middle(part: str, channels: int) -> None:
        block(f"{part}.mid.block_1", channels, channels)
        _norm(shapes, f"{part}.mid.attn_1.norm", channels)
        for name in ("q", "k", "v", "proj_out"):
            _conv(shapes, f"{part}.mid.attn_1.{name}", channels, channels, kernel=1)
        block(f"{part}.mid.block_2", channels, channels)

    _conv(shapes, "encoder.conv_in", dd["in_channels"], ch)
    channels = ch
    for i, m in enumerate(mult):
        for j in range(blocks):
            block(f"encoder.down.{i}.block.{j}", channels, ch * m)
            channels = ch * m
        if i != len(mult) - 1:
            _conv(shapes, f"encoder.down.{i}.downsample.conv", channels, channels)
    middle("encoder", channels)
    _norm(shapes, "encoder.norm_out", channels)
    _conv(shapes, "encoder.conv_out", channels, 2 * z)
    _conv(shapes, "quant_conv", 2 * z, 2 * z, kernel=1)
    _conv(shapes, "post_quant_conv", z, z, kernel=1)
    _conv(shapes, "decoder.conv_in", z, channels)
    middle("decoder", channels)
    for i in reversed(range(len(mult))):
        for j in range(blocks + 1):
            block(f"decoder.up.{i}.block.{j}", channels, ch * mult[i])
            channels = ch * mult[i]
        if i != 0:
            _conv(shapes, f"decoder.up.{i}.upsample.conv", channels, channels)
    _norm(shapes, "decoder.norm_out", channels)
    _conv(shapes, "decoder.conv_out", channels, dd["out_ch"])
    return shapes


def build_tiny_stableviton(folder: Path, zero_warps: bool = False, seed: int = 0) -> Path:
    """A whole StableVITON checkpoint in the published layout, every weight random, as ``VITONHD.safetensors``
    with a tiny ``VITONHD.yaml`` beside it in ``folder``: :func:`tiny_stableviton_state`'s UNet, encoder and
    warps, an LDM VAE (``first_stage_model.*``), the garment embedder (``cond_stage_model.transformer`` a CLIP
    vision model, ``mapper.resblocks.0``, ``final_ln``), ``proj_out``, ``learnable_vector`` and the schedule's
    buffers (``betas``, ``alphas_cumprod``; never read)."""
    import math

    import yaml
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    state, params = tiny_stableviton_state(zero_warps=zero_warps, seed=seed)
    generator = torch.Generator().manual_seed(seed + 11)

    def random(shape: tuple[int, ...], name: str) -> torch.Tensor:
        values = torch.randn(shape, generator=generator)
        if name.endswith(".weight") and len(shape) == 1:
            return 1 + 0.1 * values
        return values / math.sqrt(max(math.prod(shape[1:]), 1)) * 0.5

    state.update({f"first_stage_model.{k}": random(shape, k) for k, shape in ldm_vae_layout(TINY_VAE).items()})
    width, context = 64, params["context_dim"]
    with torch.random.fork_rng():
        torch.manual_seed(seed + 12)
        vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=width, intermediate_size=37, num_hidden_layers=1,
                                                  num_attention_heads=1, image_size=32, patch_size=8))
    state.update({f"cond_stage_model.transformer.vision_model.{k.removeprefix('vision_model.')}": v
                  for k, v in vision.state_dict().items()})  # the published keys (transformers 4's names)
    mapper = {"ln_1.weight": (width,), "ln_1.bias": (width,), "ln_2.weight": (width,), "ln_2.bias": (width,),
              "attn.c_qkv.weight": (3 * width, width), "attn.c_qkv.bias": (3 * width,),
              "attn.c_proj.weight": (width, width), "attn.c_proj.bias": (width,),
              "mlp.c_fc.weight": (4 * width, width), "mlp.c_fc.bias": (4 * width,),
              "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,)}
    state.update({f"cond_stage_model.mapper.resblocks.0.{k}": random(shape, k) for k, shape in mapper.items()})
    state["cond_stage_model.final_ln.weight"] = random((width,), "final_ln.weight")
    state["cond_stage_model.final_ln.bias"] = torch.zeros(width)
    state["proj_out.weight"], state["proj_out.bias"] = random((context, width), "w"), torch.zeros(context)
    state["learnable_vector"] = torch.randn(1, 1, context, generator=generator)
    state["betas"] = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    state["alphas_cumprod"] = torch.cumprod(1 - state["betas"], 0)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "VITONHD.safetensors")
    config = {"model": {"target": "cldm.cldm.ControlLDM", "params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215, "img_H": 32,
        "unet_config": {"target": "cldm.warping_cldm_network.StableVITON", "params": params},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                               "params": {"embed_dim": 4, "ddconfig": TINY_VAE}},
        "cond_stage_config": {"target": "ldm.modules.image_encoders.modules.FrozenCLIPImageEmbedder"}}}}
    (folder / "VITONHD.yaml").write_text(yaml.safe_dump(config))
    return folder


def build_tiny_ladi_vton(folder: Path, seed: int = 0) -> Path:
    """LaDI-VTON's layout, every weight random: an SD-2-inpainting-shaped pipeline (``build_tiny_sd``'s VAE and
    scheduler; a text encoder reading 80 tokens of a character vocabulary with the ``$`` marker),
    ``image_encoder`` and the release files ``unet_tiny.safetensors`` (31 channels) and
    ``inversion_adapter_tiny.safetensors`` (16 words)."""
    import string

    from conftest import build_tiny_sd
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig

    from dreamsmith.tryon.ladi_vton import PSEUDO_WORDS, UNET_CHANNELS, InversionAdapter

    build_tiny_sd(folder, seed=seed)
    vocab = folder.parent / f"{folder.name}-vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ",.!?'-$")
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (vocab / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (vocab / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(vocab, model_max_length=80)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 7)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=80, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        vision_config = CLIPVisionConfig(hidden_size=VISION_DIM, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=32, patch_size=8, projection_dim=VISION_DIM)
        from transformers import CLIPVisionModelWithProjection

        vision = CLIPVisionModelWithProjection(vision_config)
        adapter = InversionAdapter(vision_config, PSEUDO_WORDS * TEXT_DIM)
        unet = tiny_unet(4, UNET_CHANNELS, out_channels=4)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    vision.save_pretrained(folder / "image_encoder", safe_serialization=True)
    for name, module in (("inversion_adapter", adapter), ("unet", unet)):
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, folder / f"{name}_tiny.safetensors")
    return folder


def tryon_with_model(folder: Path, model: str) -> tuple[dict, Path]:
    """``dreamsmith tryon`` of the toy capsule's upper half in a striped garment with ``--model MODEL`` (2 source
    steps, 1 fill step, small everything) in ``folder``: the benchmark's scores and the run directory."""
    from test_generate import run_cli
    from tryon_score import capsule, score, striped_garment

    source = capsule(folder / "capsule.glb", 24)
    garment = striped_garment(folder / "stripes.png")
    out = folder / "run"
    result = run_cli("tryon", str(folder / "capsule.glb"), str(folder / "stripes.png"), "--model", model,
                     "--source-steps", "2", "--steps", "1", "--texture-size", "64", "--set", "camera.batch_size=1",
                     "--set", "camera.eval_views=4", "--set", "camera.eval_resolution=32", "--set",
                     "export.preview_resolution=48", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    return score(out / "asset.glb", source, garment), out
