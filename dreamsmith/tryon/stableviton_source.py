"""StableVITON's whole published checkpoint as a texture source (the try-on network: :mod:`.stableviton`).

``VITONHD.ckpt`` (CC BY-NC-SA 4.0: research only, never shipped here) holds, beside the try-on UNet and its
garment encoder, the Paint-by-Example parts the model started from: the VAE (``first_stage_model.*``, LDM
layout), the garment image embedder (``cond_stage_model.transformer.*``, a CLIP ViT-L/14 vision model whose
pooled output runs through ``cond_stage_model.mapper.resblocks.*``, residual attention blocks of one head,
and ``cond_stage_model.final_ln``), ``proj_out`` (to the UNet's context width) and ``learnable_vector`` (the
unconditional context). The sizes come from the published ``configs/VITONHD.yaml`` when one ``.yaml`` lies
beside the checkpoint, else from its values; the CLIP model's from its tensors (ViT-L/14's 64 channels a head).

As a texture source the UNet reads the noisy latents, the agnostic image's latents (the view with the region
grey), the mask of kept pixels (StableVITON's is 1 outside the region) and the DensePose image's latents,
here the pose image rendered from the mesh (:class:`~dreamsmith.tryon.inpaint.InpaintingSource`'s, as for
IDM-VTON); the garment's latents go to the encoder and its embedding is the context. The unconditional half
has the learnable vector as context and the garment still in the encoder, as the original's sampler; the
default guidance scale is 1 (no guidance), as its inference script. Several garments: their encoder tokens
and their embeddings are concatenated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dreamsmith.errors import ModelLoadError
from dreamsmith.tryon.garments import Garment
from dreamsmith.tryon.inpaint import InpaintingSource, InpaintInputs, garment_images
from dreamsmith.tryon.stableviton import BASE, CONTROL, PARAMS, StableVITON, key_list

VAE, EMBEDDER, VISION = "first_stage_model.", "cond_stage_model.", "cond_stage_model.transformer."
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors", ".pth", ".pt")
SCHEDULE_KEYS = frozenset((
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "logvar"))
UNUSED_PREFIXES = ("lastzc.", "model_ema.")
"""Keys the sampler never reads: the training schedule's buffers, the deprecated ``lastzc``, an EMA copy."""
CLIP_HEAD_CHANNELS = 64
PUBLISHED_CONFIG: dict[str, Any] = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215, "img_H": 512,
    "unet_config": {"params": PARAMS},
    "first_stage_config": {"params": {"ddconfig": {"z_channels": 4, "in_channels": 3, "out_ch": 3, "ch": 128,
                                                   "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2}}}}}}
"""What ``configs/VITONHD.yaml`` says (``img_H``: the inference script's default height, the square size here)."""


def find_checkpoint(path: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint and the ``model.params`` of ``--model stableviton:PATH``: PATH the checkpoint or a folder
    holding it; the config from the one ``.yaml`` beside it, else :data:`PUBLISHED_CONFIG`."""
    import yaml

    folder = path.parent if path.is_file() else path
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    configs = sorted(folder.glob("*.yaml"))
    if len(files) != 1 or len(configs) > 1:
        raise ModelLoadError(f"{path} holds {len(files)} checkpoints and {len(configs)} .yaml configs; pass "
                             "StableVITON's VITONHD.ckpt, or a folder with only it and (optionally) its VITONHD.yaml")
    config = yaml.safe_load(configs[0].read_text()) if configs else PUBLISHED_CONFIG
    try:
        params = dict(config["model"]["params"])
        params["unet_config"]["params"], params["first_stage_config"]["params"]["ddconfig"]  # noqa: B018
    except (KeyError, TypeError):
        raise ModelLoadError(f"{configs[0]} is not StableVITON's config (no model.params.unet_config.params and "
                             "first_stage_config.params.ddconfig)") from None
    return files[0], params


def ldm_vae(state: dict[str, Tensor], ddconfig: dict[str, Any], scale_factor: float) -> Any:
    """diffusers' ``AutoencoderKL`` of the checkpoint's ``first_stage_model.*`` (LDM layout); every key placed."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_state = {k: v for k, v in state.items() if k.startswith(VAE)}
    levels = len(ddconfig["ch_mult"])
    config = {"in_channels": int(ddconfig["in_channels"]), "out_channels": int(ddconfig["out_ch"]),
              "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
              "block_out_channels": [int(ddconfig["ch"]) * int(m) for m in ddconfig["ch_mult"]],
              "latent_channels": int(ddconfig["z_channels"]), "layers_per_block": int(ddconfig["num_res_blocks"]),
              "scaling_factor": float(scale_factor)}
    converted = convert_ldm_vae_checkpoint(vae_state, config) if vae_state else {}
    placed = {value.data_ptr() for value in converted.values()}  # the converter keeps the tensors (or views)
    unplaced = [key for key, value in vae_state.items() if value.data_ptr() not in placed]
    vae = AutoencoderKL(**config)
    missing, _ = vae.load_state_dict(converted, strict=False)
    _refuse(missing, unplaced, "first_stage_model (the VAE)")
    return vae


def clip_vision(state: dict[str, Tensor]) -> Any:
    """The CLIP vision model of ``cond_stage_model.transformer.vision_model.*``, its sizes read from the tensors."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    prefix = VISION + "vision_model."
    given = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    needed = ["embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
              "encoder.layers.0.mlp.fc1.weight"]
    if any(key not in given for key in needed):
        _refuse([prefix + key for key in needed if key not in given], [], "cond_stage_model (the garment embedder)")
    hidden, _, patch, _ = given[needed[0]].shape
    side = round(math.sqrt(given[needed[1]].shape[0] - 1))
    layers = len({k.split(".")[2] for k in given if k.startswith("encoder.layers.")})
    model = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=given[needed[2]].shape[0], num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // CLIP_HEAD_CHANNELS), patch_size=patch, image_size=patch * side))
    own = "vision_model." if any(k.startswith("vision_model.") for k in model.state_dict()) else ""  # transformers 4
    missing, unexpected = model.load_state_dict({own + k: v for k, v in given.items()}, strict=False)
    unexpected = [prefix + k.removeprefix(own) for k in unexpected if not k.endswith("position_ids")]
    unexpected += [k for k in state if k.startswith(VISION) and not k.startswith(prefix)]
    _refuse([prefix + k.removeprefix(own) for k in missing], unexpected, "cond_stage_model.transformer (CLIP vision)")
    return model


class MapperAttention(nn.Module):
    """Paint-by-Example's attention over ``[B, N, width]``: one projection to each head's q, k, v in turn."""

    def __init__(self, width: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.c_qkv(x).view(batch, tokens, self.heads, -1).chunk(3, dim=-1)
        weights = (torch.einsum("bthc,bshc->bhts", q, k) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        return self.c_proj(torch.einsum("bhts,bshc->bthc", weights, v).reshape(batch, tokens, -1))


class MapperBlock(nn.Module):
    """One residual attention block of the mapper (``ln_1``, ``attn``, ``ln_2``, ``mlp.c_fc/c_proj``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = MapperAttention(width)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(nn.functional.gelu(self.mlp.c_fc(self.ln_2(x))))


class GarmentEmbedder(nn.Module):
    """Garment images to the UNet's context: CLIP's pooled output, the mapper, ``final_ln``, ``proj_out``;
    ``learnable_vector`` the unconditional context ``[1, 1, D]``."""

    def __init__(self, vision: Any, blocks: int, context: int) -> None:
        super().__init__()
        width = int(vision.config.hidden_size)
        self.vision = vision
        self.mapper = nn.Module()
        self.mapper.resblocks = nn.ModuleList(MapperBlock(width) for _ in range(blocks))
        self.final_ln = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, context)
        self.learnable_vector = nn.Parameter(torch.zeros(1, 1, context))

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> GarmentEmbedder:
        if "proj_out.weight" not in state or "learnable_vector" not in state:
            _refuse([k for k in ("proj_out.weight", "learnable_vector") if k not in state], [], "the checkpoint")
        blocks = len({k.split(".")[3] for k in state if k.startswith(f"{EMBEDDER}mapper.resblocks.")})
        module = cls(clip_vision(state), blocks, state["proj_out.weight"].shape[0])
        names = {k: k if k.startswith(("proj_out.", "learnable_vector")) else EMBEDDER + k
                 for k in module.state_dict() if not k.startswith("vision.")}
        extra = set(state) - set(names.values())
        _refuse([name for name in names.values() if name not in state],
                [k for k in state if k in extra and k.startswith(EMBEDDER) and not k.startswith(VISION)],
                "the garment embedder")
        given = {own: state[name] for own, name in names.items()}
        module.load_state_dict(given, strict=False)
        return module

    def forward(self, images: Tensor) -> Tensor:
        """``[G, 1, D]`` of garment images ``[G, H, W, 3]`` in [0, 1]."""
        from dreamsmith.tryon.idm_vton import clip_pixels

        x = self.vision(pixel_values=clip_pixels(images, self.vision)).pooler_output[:, None]
        for block in self.mapper.resblocks:
            x = block(x)
        return self.proj_out(self.final_ln(x))


def _refuse(missing: list[str], unexpected: list[str], where: str) -> None:
    if missing or unexpected:
        raise ModelLoadError(f"{where} does not fit StableVITON's layout: {key_list(missing, 'missing')}; "
                             f"{key_list(unexpected, 'unexpected')}")


@dataclass
class StableVITONModel:
    """The loaded checkpoint: ``prior`` (its VAE, scheduler and the try-on UNet), ``network``, ``embedder``."""

    prior: Any
    network: StableVITON
    embedder: GarmentEmbedder

    @classmethod
    def load(cls, path: Path, device: torch.device, allow_pickle: bool = False) -> StableVITONModel:
        from dreamsmith.guidance.loading import read_checkpoint

        checkpoint, params = find_checkpoint(path)
        state = read_checkpoint(checkpoint, allow_pickle)
        try:
            return cls._build(state, params, checkpoint, device)
        except RuntimeError as error:  # a tensor of the wrong shape
            reason = str(error).strip().splitlines()[-1][:300]
            raise ModelLoadError(f"{checkpoint} does not fit StableVITON: {reason}") from None

    @classmethod
    def _build(cls, state: dict[str, Tensor], params: dict[str, Any], checkpoint: Path,
               device: torch.device) -> StableVITONModel:
        from diffusers import DDIMScheduler

        from dreamsmith.guidance.priors import DiffusionPrior

        parts = (BASE, CONTROL, VAE, EMBEDDER, "proj_out.", *UNUSED_PREFIXES)
        unknown = [k for k in state if not k.startswith(parts) and k not in SCHEDULE_KEYS | {"learnable_vector"}]
        _refuse([], unknown, str(checkpoint))
        vae = ldm_vae(state, params["first_stage_config"]["params"]["ddconfig"], params.get("scale_factor", 0.18215))
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        network = StableVITON.from_ldm_state(state, params["unet_config"]["params"],
                                             int(params.get("img_H", 512)) // factor)
        embedder = GarmentEmbedder.from_state(state)
        scheduler = DDIMScheduler(num_train_timesteps=int(params.get("timesteps", 1000)),
                                  beta_start=float(params.get("linear_start", 0.00085)),
                                  beta_end=float(params.get("linear_end", 0.012)), beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        for module in (network, vae, embedder):
            module.to(device).eval().requires_grad_(False)
        return cls(DiffusionPrior(network.unet, scheduler, None, None, vae), network, embedder)


class StableVITONSource(InpaintingSource):
    """Dresses views with StableVITON (see the module doc): ``steps`` DDIM steps at ``guidance_scale``."""

    name = "stableviton"

    def __init__(self, model: StableVITONModel, garments: list[Garment], steps: int = 50, guidance_scale: float = 1.0,
                 chunk: int = 4, seed: int = 0) -> None:
        super().__init__(model.prior, garments, steps, guidance_scale, chunk, seed)
        self.model = model

    def conditions(self, inputs: InpaintInputs) -> dict[str, Any]:
        prior, batch = self.prior, len(inputs.person)
        images = garment_images(self.garments, prior.image_size).to(prior.device, prior.dtype)
        context = self.model.embedder(images).flatten(0, 1)[None].expand(batch, -1, -1)  # the garments side by side
        empty = self.model.embedder.learnable_vector.expand(batch, context.shape[1], -1)  # as one token, repeated
        return {"context": torch.cat([empty, context]), "pose": self.latents_of(inputs.pose),
                "garments": list(self.latents_of(images.permute(0, 3, 1, 2)).split(1))}

    def predict(self, latents: Tensor, timestep: Tensor, inputs: InpaintInputs, conditions: dict[str, Any]) -> Tensor:
        sample = torch.cat([latents, inputs.masked, 1 - inputs.mask, conditions["pose"]], dim=1)
        if self.guidance_scale == 1:  # the unconditional half would be weighed by 0
            garments = [garment.expand(len(sample), -1, -1, -1) for garment in conditions["garments"]]
            conditional = self.model.network(sample, timestep, conditions["context"][len(sample):], garments)
            return torch.cat([conditional, conditional])
        garments = [garment.expand(2 * len(sample), -1, -1, -1) for garment in conditions["garments"]]
        return self.model.network(sample.repeat(2, 1, 1, 1), timestep, conditions["context"], garments)
