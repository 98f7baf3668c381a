"""PhotoMaker (Li et al. 2024, "PhotoMaker: Customizing Realistic Human Photos via Stacked ID Embedding"), v1.

The prompt names the subject with a class word followed by the trigger word (``"a photo of a man img"``). The
trigger word is removed before the tokenizer runs (one copy of the class token per ID image takes its place,
:meth:`~dreamsmith.guidance.priors.DiffusionPrior.prompt_text`); the ID encoder — CLIP-L's vision tower, its
projection and a second one (768 + 1280 = SDXL's 2048-wide text) — embeds each ID image, and the fuse MLP
mixes each with the class token's text embedding; the results replace those prompt positions. CLIP's text
encoders are causal, so a class token's embedding does not depend on what follows it: the fused rows are
computed once and hold for every view-dependent suffix. As published, the fused prompt is used only after
``start_merge_step`` (the first ``style_strength`` of the denoising trajectory sees the plain prompt): here, for
samples with t < (1 − style_strength) · T, in the fully conditioned branch. The LoRA of the checkpoint is a named
adapter (:mod:`dreamsmith.guidance.lora`) active in the calls this conditioner is passed to. One difference from
the published pipeline: its plain prompt drops the trigger word (the class word once), while here the plain rows
hold the class word once per ID image, as the fused rows do (the same text with one photo).

Published layout (``photomaker-v1.bin``): ``{"id_encoder": {vision_model.*, visual_projection.weight,
visual_projection_2.weight, fuse_module.{mlp1,mlp2}.{layernorm,fc1,fc2}.*, fuse_module.layer_norm.*},
"lora_weights": {unet.<module>.processor.<to_q|to_k|to_v|to_out>_lora.<down|up>.weight}}``.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dreamsmith.errors import ConfigError, ModelLoadError
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner, tile_to_batch
from dreamsmith.guidance.image_projection import check_keys
from dreamsmith.prompt_words import trigger_pattern, without_trigger

PARTS = ("id_encoder", "lora_weights")
LORA_NAME = "photomaker"
CLIP_HEAD_DIM = 64
FUSED_BRANCHES = ("cond",)


class FuseMLP(nn.Module):
    """LayerNorm, linear, GELU, linear (keys ``layernorm``, ``fc1``, ``fc2``), with a residual when square."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, residual: bool) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc2(nn.functional.gelu(self.fc1(self.layernorm(x))))
        return out + x if self.residual else out


class FuseModule(nn.Module):
    """``fuse(word [N, D], id [N, D])``: mlp2(mlp1([word, id]) + word), LayerNormed (PhotoMaker's fuse_fn)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp1 = FuseMLP(2 * width, width, width, residual=False)
        self.mlp2 = FuseMLP(width, width, width, residual=True)
        self.layer_norm = nn.LayerNorm(width)

    def forward(self, word: Tensor, identity: Tensor) -> Tensor:
        fused = self.mlp1(torch.cat([word, identity.to(word)], dim=-1)) + word
        return self.layer_norm(self.mlp2(fused))


class IDEncoder(nn.Module):
    """CLIP's vision tower with its projection (``vision_model``, ``visual_projection``), the second projection
    and the fuse module: ID images -> ``[N, D1 + D2]`` -> fused with the class word's embeddings."""

    def __init__(self, clip: nn.Module, second_width: int) -> None:
        super().__init__()
        self.clip = clip
        hidden = int(clip.config.hidden_size)
        self.visual_projection_2 = nn.Linear(hidden, second_width, bias=False)
        self.fuse_module = FuseModule(int(clip.config.projection_dim) + second_width)

    def embed(self, pixels: Tensor) -> Tensor:
        """``[N, D1 + D2]`` of normalised pixels ``[N, 3, S, S]``."""
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return torch.cat([self.clip.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1)


def id_encoder_from_state(state: dict[str, Tensor], name: str) -> IDEncoder:
    """The :class:`IDEncoder` a published ``id_encoder`` state dict describes (sizes from its shapes; CLIP's
    64-wide heads), its weights loaded; missing or unexpected keys named in one line."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:
        patch = state["vision_model.embeddings.patch_embedding.weight"]
        hidden, _, patch_size, _ = patch.shape
        positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
        layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers."))
        config = CLIPVisionConfig(
            hidden_size=hidden, patch_size=patch_size, image_size=patch_size * round((positions - 1) ** 0.5),
            intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=layers, num_attention_heads=max(1, hidden // CLIP_HEAD_DIM),
            projection_dim=state["visual_projection.weight"].shape[0])
        second = state["visual_projection_2.weight"].shape[0]
    except (KeyError, ValueError) as error:
        raise ModelLoadError(f"{name}: id_encoder is not PhotoMaker's layout (no {error})") from None
    encoder = IDEncoder(CLIPVisionModelWithProjection(config), second)
    own = {key.removeprefix("clip."): value for key, value in encoder.state_dict().items()}
    try:
        check_keys(set(own), set(state), "id_encoder")
    except ValueError as error:
        raise ModelLoadError(f"{name}: {error}") from None
    encoder.load_state_dict({("clip." if key.startswith(("vision_model.", "visual_projection.")) else "") + key:
                             value for key, value in state.items()})
    return encoder.requires_grad_(False).eval()


def lora_from_published(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """peft keys (``<module>.to_q.lora_A.weight``) of PhotoMaker's attention-processor LoRA keys
    (``unet.<module>.processor.to_q_lora.down.weight``; ``to_out_lora`` adapts ``to_out.0``)."""
    pattern = re.compile(r"^(?:unet\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
    converted = {}
    for key, value in state.items():
        match = pattern.match(key)
        if match is None:
            raise ModelLoadError(f"{name}: lora_weights key {key!r} is not PhotoMaker's layout "
                                 "(unet.<module>.processor.to_q_lora.down.weight)")
        module, projection, side = match.groups()
        projection = "to_out.0" if projection == "to_out" else projection
        converted[f"{module}.{projection}.lora_{'A' if side == 'down' else 'B'}.weight"] = value
    return converted


def read_photomaker(path: Path, allow_pickle: bool = False) -> dict[str, dict[str, Tensor]]:
    """``{"id_encoder": ..., "lora_weights": ...}`` of ``photomaker-v1.bin`` (or its flattened .safetensors)."""
    from dreamsmith.guidance.loading import read_checkpoint

    state = read_checkpoint(path, allow_pickle)
    if path.suffix == ".safetensors":
        flat, state = state, {part: {} for part in PARTS}
        for key, value in flat.items():
            part, _, rest = key.partition(".")
            if part in state:
                state[part][rest] = value
    if not all(isinstance(state.get(part), dict) and state[part] for part in PARTS):
        raise ModelLoadError(f"{path} is not a PhotoMaker checkpoint: it needs id_encoder and lora_weights")
    return state


class PhotoMakerConditioner(Conditioner):
    """Puts ``fused [N, D]`` at the class-token ``positions`` of the fully conditioned samples whose t is below
    ``merge_t``; activates the PhotoMaker LoRA (``lora_scale``). Without positions (no trigger word) the prompt
    embeddings pass unchanged."""

    def __init__(self, positions: list[int], fused: Tensor, merge_t: float, lora: str | None = None,
                 lora_scale: float = 1.0) -> None:
        self.positions = positions
        self.fused = fused
        self.merge_t = merge_t
        self.lora = lora
        self.lora_scale = lora_scale

    def transform_prompt_embeds(self, embeds: Tensor, context: ConditionContext) -> Tensor:
        if not self.positions:
            return embeds
        batch = embeds.shape[0]
        labels = context.branch_labels or FUSED_BRANCHES
        rows = tile_to_batch(torch.tensor([label in FUSED_BRANCHES for label in labels]), batch).to(embeds.device)
        if context.timesteps is not None:
            rows = rows & (tile_to_batch(context.timesteps.reshape(-1), batch).to(embeds.device) < self.merge_t)
        if not rows.any():
            return embeds
        out = embeds.clone()
        index = torch.tensor(self.positions, device=embeds.device)
        out[:, index] = torch.where(rows.view(-1, 1, 1), self.fused.to(embeds)[None], embeds[:, index])
        return out

    def applied(self, unet: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        if self.lora is None:
            return contextlib.nullcontext()
        from dreamsmith.guidance.lora import loras_active

        return loras_active(unet, {self.lora: self.lora_scale})


def class_positions(prior: Any, prompt: str, trigger: str, copies: int) -> tuple[list[int], str]:
    """The token positions of the class word's copies in ``prompt`` once its trigger word is written as them, and
    the class word; ``([], "")`` for a prompt without the trigger word; a ``ConfigError`` for two triggers or a
    class word of several tokens."""
    matches = list(trigger_pattern(trigger).finditer(prompt))
    if not matches:
        return [], ""
    if len(matches) > 1:
        raise ConfigError(f"the prompt holds the PhotoMaker trigger word '{trigger}' {len(matches)} times; write it "
                          "once, after the class word (\"a photo of a man img\")")
    word = matches[0].group(1)
    tokenizer = prior.tokenizer
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        raise ConfigError(f"the PhotoMaker class word '{word}' (before '{trigger}') is not one word of the model's "
                          "vocabulary; use a word like man, woman, boy, girl")
    start = len(tokenizer(prior.prompt_text(prompt[:matches[0].start(1)]).rstrip()).input_ids) - 1  # BOS, no EOS
    positions = list(range(start, start + copies))
    full = tokenizer(prior.prompt_text(without_trigger(prompt, trigger, copies))).input_ids
    if positions[-1] >= prior.max_prompt_tokens() - 1 or [full[p] for p in positions] != ids * copies:
        raise ConfigError(f"the PhotoMaker class word '{word}' lies beyond the {prior.max_prompt_tokens()} tokens the "
                          "text encoder reads; move it to the start of the prompt")
    return positions, word


def load_photomaker(path: str | Path, images: Any, prior: Any, prompt: str, trigger: str = "img",
                    style_strength: float = 0.2, lora_scale: float = 1.0,
                    allow_pickle: bool = False) -> PhotoMakerConditioner:
    """The :class:`PhotoMakerConditioner` of the checkpoint at ``path`` for ``prior`` and the run's ``prompt``,
    with ID ``images`` (each ``[H, W, 3]`` in [0, 1]): its LoRA installed, the fused rows computed once."""
    from dreamsmith.guidance.image_encoders import CLIPImageEncoder
    from dreamsmith.guidance.lora import install_lora, lora_names

    file = Path(path).expanduser()
    name = f"the PhotoMaker checkpoint {file}"
    if not file.is_file():
        raise ModelLoadError(f"{name} does not exist; pass photomaker-v1.bin (with --allow-pickle) or a .safetensors")
    state = read_photomaker(file, allow_pickle)
    encoder = id_encoder_from_state(state["id_encoder"], name)
    width = encoder.fuse_module.layer_norm.normalized_shape[0]
    unet_width = int(prior.unet.config.cross_attention_dim)
    if width != unet_width:
        raise ConfigError(f"{name} is for another base model: it fuses {width}-wide text embeddings, the model's "
                          f"cross-attention reads {unet_width} (PhotoMaker is for SDXL)")
    if LORA_NAME not in lora_names(prior.unet):
        install_lora(prior.unet, lora_from_published(state["lora_weights"], name), LORA_NAME, name)
    rgb = [torch.as_tensor(image, dtype=torch.float32) for image in images]
    positions, _ = class_positions(prior, prompt, trigger, len(rgb))
    merge_t = (1 - style_strength) * prior.num_train_timesteps
    if not positions:
        return PhotoMakerConditioner([], torch.zeros(0), merge_t, LORA_NAME, lora_scale)
    prior.prompt_rewrites[f"photomaker:{trigger}"] = lambda text: without_trigger(text, trigger, len(rgb))
    encoder = encoder.to(device=prior.device, dtype=prior.dtype)
    with torch.no_grad():
        pixels = torch.cat([CLIPImageEncoder(encoder.clip).pixels(image[None]) for image in rgb])
        identity = encoder.embed(pixels.to(prior.device, prior.dtype))
        embeds, _ = prior.text_condition(prior.encode_prompts([prompt]))
        fused = encoder.fuse_module(embeds[0, positions], identity)
    return PhotoMakerConditioner(positions, fused, merge_t, LORA_NAME, lora_scale)
