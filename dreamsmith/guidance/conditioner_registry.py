"""Conditioners by the name configs use (``guidance.conditioners: [{name: ..., ...}]``), filled explicitly.

Each entry is (options dataclass, factory). The options are checked when the run's config resolves,
before any model loads; the factory builds the conditioner for a loaded prior when the stage starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from dreamsmith.configs import Range, build, nearest
from dreamsmith.errors import ConfigError, DreamsmithError
from dreamsmith.guidance.conditioners import Conditioner, ControlNetConditioner
from dreamsmith.guidance.face_keypoints import DEFAULT_LANDMARKS
from dreamsmith.guidance.uni_controlnet import PUBLISHED_SLOTS
from dreamsmith.image_files import check_image
from dreamsmith.regions import parse_region, parse_subject
from dreamsmith.self_guidance_terms import check_self_guidance_words, parse_self_guidance


@dataclass
class ControlNetOptions:
    """A ControlNet fed with the asset's own renders (Zhang et al. 2023)."""

    model: str = ""
    """A diffusers ControlNet folder (config.json + weights), for the stage's base model."""
    source: Literal["depth", "normal", "opacity"] = "depth"
    """Which render of the asset is the control image."""
    scale: float = 1.0
    """Conditioning scale (0: the base model exactly)."""


@dataclass
class UniControlNetOptions:
    """Uni-ControlNet (Zhao et al. 2023): one local adapter for several of the asset's renders stacked, and a
    global image condition as extra context tokens."""

    model: str = ""
    """The Uni-ControlNet checkpoint (the authors' layout: local_adapter.* / global_adapter.* keys), .safetensors
    (or .ckpt with allow_pickle), for the stage's base model."""
    sources: list[Literal["depth", "normal", "opacity"]] = field(default_factory=lambda: ["depth"])
    """Renders of the asset fed to the local adapter, each into the slot of its name."""
    slots: list[str] = field(default_factory=lambda: list(PUBLISHED_SLOTS))
    """The checkpoint's stacked conditions in order, three channels each (the published: canny, mlsd, hed,
    sketch, openpose, depth (MiDaS), seg)."""
    scale: float = 1.0
    """Strength of the local adapter's residuals (0: the base model exactly)."""
    reference_image: str = ""
    """An image for the global adapter (empty: no global condition)."""
    image_encoder: str = ""
    """A transformers CLIPVisionModelWithProjection folder that embeds reference_image (the published model:
    openai/clip-vit-large-patch14)."""
    global_strength: float = 1.0
    """Scale of the global tokens appended to the text tokens."""

    def check(self, path: str) -> None:
        if not self.sources:
            raise ConfigError(f"'{path}.sources' needs at least one of depth, normal, opacity")
        for source in self.sources:
            if source not in self.slots:
                raise ConfigError(f"'{path}': the Uni-ControlNet has no '{source}' condition; its slots are "
                                  f"{', '.join(self.slots)} (set slots for a checkpoint trained with others)")
        if bool(self.reference_image) != bool(self.image_encoder):
            raise ConfigError(f"'{path}': a global condition needs both reference_image and image_encoder")
        if self.reference_image:
            check_image(self.reference_image, f"'{path}.reference_image'")


@dataclass
class LoRAOptions:
    """A LoRA adapter file in the diffusers/peft layout (``pytorch_lora_weights.safetensors``)."""

    path: str = ""
    """The .safetensors file, or a folder holding pytorch_lora_weights.safetensors."""
    scale: float = 1.0
    """Strength of the weight delta (0: the base model exactly)."""
    adapter_name: str = ""
    """Name of the adapter on the model (default: the file's stem); keep it apart from a guidance's own."""


@dataclass
class AdapterOptions:
    """A personalization adapter folder (``dreamsmith personalize``, or diffusers-layout TI/LoRA files)."""

    path: str = ""
    """The adapter folder (learned_embeds.safetensors and/or pytorch_lora_weights.safetensors)."""
    scale: float = 1.0
    """Strength of its LoRA (0: the base model exactly; its tokens stay defined)."""
    reward_scale: float = 0.0
    """DCO's reward guidance w: adds w(ε_adapter − ε_base) for the fully conditioned branch (0: plain CFG)."""


@dataclass
class RegionsOptions:
    """Regional prompts bound to 3D regions of the asset (RPG's regional cross-attention)."""

    regions: list[str] = field(default_factory=list)
    """'EXPRESSION: PROMPT' entries, e.g. 'y>0: a red roof' or 'box(-0.2,0,-0.2,0.2,0.5,0.2): a red door'."""
    base_ratio: Annotated[float, Range(0.0, 1.0)] = 0.3
    """How much of the base prompt's cross-attention is kept inside the regions (1: the base prompt only)."""

    def check(self, path: str) -> None:
        _check_entries(self.regions, f"{path}.regions", parse_region, "'EXPRESSION: PROMPT'", "'y>0: a red roof'")


@dataclass
class SelfGuidanceOptions:
    """Self-guidance: energies on the cross-attention maps of words of the prompt (Epstein et al. 2023)."""

    terms: list[str] = field(default_factory=list)
    """'WORD:KIND=VALUE[@WEIGHT]' entries: 'cube:centroid=0.3,0.5', 'cube:size=0.4', 'cube:shape=disk(.5,.5,.2)'."""
    weight: Annotated[float, Range(0.0, None)] = 1.0
    """v in ε̂ += v σ_t ∇_{z_t} g, the strength of all terms (0: plain guidance, bit for bit)."""
    sharpness: Annotated[float, Range(0.0, None)] = 10.0
    """k of the soft threshold sigmoid(k (A / max A − ½)) the size and shape energies read."""

    def check(self, path: str) -> None:
        _check_entries(self.terms, f"{path}.terms", parse_self_guidance, "'WORD:KIND=VALUE'", "'cube:size=0.4'")


def _check_entries(entries: list[str], path: str, parse: Callable[[str], Any], form: str, example: str) -> None:
    """A list option holds at least one entry and each parses; a ConfigError names the entry's index."""
    if not entries:
        raise ConfigError(f"'{path}' needs at least one {form} entry, e.g. {example}")
    for index, spec in enumerate(entries):
        try:
            parse(spec)
        except DreamsmithError as error:
            raise ConfigError(f"'{path}.{index}': {error}") from None


def _check_image_option(image: str, path: str, conditioner: str) -> None:
    from dreamsmith.image_files import check_image

    if not image:
        raise ConfigError(f"'{path}' is required for the {conditioner} conditioner")
    try:
        check_image(image, f"'{path}'")
    except DreamsmithError as error:
        raise ConfigError(str(error)) from None


@dataclass
class IPAdapterOptions:
    """An image prompt through an IP-Adapter's decoupled cross-attention (Ye et al. 2023)."""

    path: str = ""
    """The adapter: a published checkpoint (ip-adapter_sd15.safetensors, ...) or a folder holding one."""
    image: str = ""
    """The reference image (PNG/JPEG) the renders should look like."""
    scale: Annotated[float, Range(0.0, None)] = 1.0
    """λ, the weight of the image attention (0: the base model exactly)."""
    image_encoder: str = ""
    """The adapter's image encoder folder (default: image_encoder/ beside the checkpoint, as published)."""

    def check(self, path: str) -> None:
        _check_image_option(self.image, f"{path}.image", "ip_adapter")


@dataclass
class MultiSubjectOptions:
    """Several subject images, each confined to a 3D box of the asset (MS-Diffusion's layout-guided attention)."""

    path: str = ""
    """The MS-Diffusion checkpoint (ms_adapter.bin, read with allow_pickle, or a .safetensors conversion) or its
    folder, its image encoder in image_encoder/ beside it."""
    subjects: list[str] = field(default_factory=list)
    """'EXPRESSION: IMAGE[=PHRASE]' entries, e.g. 'box(-0.5,0,-0.5,0,0.5,0.5): dog.png=a dog' (PHRASE: the words
    naming the subject, which ground its tokens; without it the learned queries are used)."""
    scale: Annotated[float, Range(0.0, None)] = 0.6
    """λ, the weight of the subjects' image attention (0: the base model exactly; 0.6 as published)."""
    image_encoder: str = ""
    """The adapter's image encoder folder (default: image_encoder/ beside the checkpoint)."""

    def check(self, path: str) -> None:
        _check_entries(self.subjects, f"{path}.subjects", parse_subject, "'EXPRESSION: IMAGE[=PHRASE]'",
                       "'box(-0.5,0,-0.5,0,0.5,0.5): dog.png'")
        for index, spec in enumerate(self.subjects):
            _check_image_option(parse_subject(spec).image, f"{path}.subjects.{index}", "multi_subject")


@dataclass
class StyleAlignedOptions:
    """A style shared from a reference image through every self-attention (StyleAligned, Hertz et al. 2023)."""

    image: str = ""
    """The style reference image (PNG/JPEG)."""
    adain_queries: bool = True
    """Normalise the asset's self-attention queries to the reference's mean and std (AdaIN)."""
    adain_keys: bool = True
    """Normalise the asset's self-attention keys to the reference's mean and std (AdaIN)."""
    seed: int = 0
    """Seed of the noise the reference is diffused with (one draw per step, shared by the step's samples)."""
    scale: Annotated[float, Range(0.0, 1.0)] = 1.0
    """λ in λ · shared attention + (1 − λ) · own attention (1: as published; 0: the base model exactly)."""

    def check(self, path: str) -> None:
        _check_image_option(self.image, f"{path}.image", "style_aligned")


@dataclass
class MultimodalPromptOptions:
    """Images inside the prompt (KOSMOS-G's interface), aligned into word embeddings; written by the run's config
    from the prompt's ``<image:PATH>`` placeholders."""

    aligner: str = ""
    """The aligner folder (config.json + model.safetensors), its image encoder in image_encoder/ beside it."""
    refs: list[str] = field(default_factory=list)
    """Each placeholder's path as the prompt writes it."""
    images: list[str] = field(default_factory=list)
    """Each placeholder's image file, resolved."""

    def check(self, path: str) -> None:
        if not self.aligner:
            raise ConfigError(f"'{path}.aligner' is required for the multimodal_prompt conditioner")
        if len(self.refs) != len(self.images):
            raise ConfigError(f"'{path}': refs and images must pair up ({len(self.refs)} refs, {len(self.images)} "
                              "images)")
        for index, image in enumerate(self.images):
            _check_image_option(image, f"{path}.images.{index}", "multimodal_prompt")


@dataclass
class InstantIDOptions:
    """Identity from a face embedding (InstantID, Wang et al. 2024): ID tokens into decoupled cross-attention plus
    IdentityNet on the keypoints of 3D face landmarks, both only in views that see the face."""

    path: str = ""
    """InstantX/InstantID's ip-adapter.bin (or a .safetensors conversion), IdentityNet in ControlNetModel/ beside it."""
    face_embedding: str = ""
    """The face's 512-wide ArcFace embedding, .npy or .safetensors (made with the user's own face tool)."""
    scale: Annotated[float, Range(0.0, None)] = 0.8
    """Weight of the ID tokens' attention (0 with controlnet_scale 0: the base model exactly)."""
    controlnet_scale: Annotated[float, Range(0.0, None)] = 0.8
    """IdentityNet's conditioning scale (0: IdentityNet is not loaded)."""
    controlnet: str = ""
    """IdentityNet's folder (default: ControlNetModel/ beside the adapter, as published)."""
    landmarks: list[float] = field(default_factory=lambda: [v for point in DEFAULT_LANDMARKS for v in point])
    """The face on the asset: 15 numbers, x y z of the left eye, right eye, nose tip, left and right mouth corner
    (as seen from the front); the default is a face on the +z side of a unit-sized asset."""

    def check(self, path: str) -> None:
        from dreamsmith.face_embedding import read_face_embedding

        if not self.face_embedding:
            raise ConfigError(f"'{path}.face_embedding' is required for the instantid conditioner")
        try:
            read_face_embedding(self.face_embedding, f"'{path}.face_embedding'")
        except DreamsmithError as error:
            raise ConfigError(str(error)) from None
        if len(self.landmarks) != 15 or not all(math.isfinite(v) for v in self.landmarks):
            raise ConfigError(f"'{path}.landmarks' needs 15 numbers (x y z of 5 face landmarks), got "
                              f"{len(self.landmarks)}")


@dataclass
class PhotoMakerOptions:
    """Identity from photos fused into the class word's prompt embeddings (PhotoMaker v1, Li et al. 2024)."""

    path: str = ""
    """photomaker-v1.bin (or a .safetensors conversion): id_encoder and lora_weights."""
    images: list[str] = field(default_factory=list)
    """Photos of the person (one class-token copy each)."""
    trigger_word: str = "img"
    """The word after the class word that marks it ("a photo of a man img")."""
    style_strength: Annotated[float, Range(0.0, 1.0)] = 0.2
    """The part of the denoising trajectory (from t = T) that sees the plain prompt (start_merge_step)."""
    lora_scale: Annotated[float, Range(0.0, None)] = 1.0
    """Strength of the checkpoint's LoRA."""

    def check(self, path: str) -> None:
        if not self.images:
            raise ConfigError(f"'{path}.images' needs at least one photo for the photomaker conditioner")
        for index, image in enumerate(self.images):
            _check_image_option(image, f"{path}.images.{index}", "photomaker")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _controlnet(options: ControlNetOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.loading import load_controlnet
    from dreamsmith.paths import resolve_model

    controlnet = load_controlnet(resolve_model(options.model), prior.device, prior.dtype, allow_pickle)
    base, control = prior.unet.config, controlnet.config
    for key in ("cross_attention_dim", "block_out_channels", "in_channels"):
        if _plain(base.get(key)) != _plain(control.get(key)):
            raise ConfigError(f"the ControlNet {options.model} is for another base model: its {key} is "
                              f"{control.get(key)}, the stage's model has {base.get(key)}")
    return ControlNetConditioner(controlnet, options.source, options.scale)


def _uni_controlnet(options: UniControlNetOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.uni_controlnet import UniControlNetConditioner
    from dreamsmith.guidance.uni_loading import load_uni_controlnet

    local, global_adapter = load_uni_controlnet(options.model, prior.unet, prior.device, prior.dtype, allow_pickle)
    if local is not None and local.local_channels != 3 * len(options.slots):
        raise ConfigError(f"the Uni-ControlNet {options.model} reads {local.local_channels} condition channels, "
                          f"but {len(options.slots)} slots are configured ({3 * len(options.slots)} channels)")
    embedding = None
    if options.reference_image:
        if global_adapter is None:
            raise ConfigError(f"the Uni-ControlNet {options.model} has no global adapter for reference_image")
        from dreamsmith.guidance.uni_image import embed_reference_image

        embedding = embed_reference_image(options.reference_image, options.image_encoder, allow_pickle)
    return UniControlNetConditioner(local, options.sources, options.slots, options.scale,
                                    global_adapter if embedding is not None else None, embedding,
                                    options.global_strength)


def _lora(options: LoRAOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.lora import LoRAConditioner, load_lora_file

    name = load_lora_file(prior.unet, Path(options.path), options.adapter_name or None)
    return LoRAConditioner(name, options.scale)


def _adapter(options: AdapterOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.adapters import load_adapter

    return load_adapter(prior, Path(options.path), options.scale, options.reward_scale)


def _regions(options: RegionsOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.prompt_check import check_prompt
    from dreamsmith.guidance.regional import RegionalPrompts

    regions = [parse_region(spec) for spec in options.regions]
    for region in regions:
        check_prompt(region.prompt, prior)
    embeds, _ = prior.text_condition(prior.encode_prompts([region.prompt for region in regions]))
    return RegionalPrompts(regions, embeds, options.base_ratio)


def _self_guidance(options: SelfGuidanceOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.p2p_tokens import word_spans
    from dreamsmith.guidance.self_guidance import SelfGuidance

    terms = [parse_self_guidance(spec) for spec in options.terms]
    check_self_guidance_words(prompt, terms)
    words, spans = prompt.split(), word_spans(prior.tokenizer, prompt)
    limit = prior.max_prompt_tokens()
    term_spans = [spans[words.index(term.word)] for term in terms]
    if any(end > limit for _, end in term_spans):
        raise ConfigError(f"a --self-guidance word lies beyond the {limit} tokens the text encoder reads")
    return SelfGuidance(terms, term_spans, options.weight, prior.alphas_cumprod, options.sharpness)


def _ip_adapter(options: IPAdapterOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.ip_adapter_loading import image_prompt
    from dreamsmith.image_files import read_image

    return image_prompt(options.path, read_image(options.image), prior, options.scale,
                        options.image_encoder or None, allow_pickle)


def _multi_subject(options: MultiSubjectOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.ms_diffusion_loading import subject_prompt
    from dreamsmith.image_files import read_image

    subjects = [parse_subject(spec) for spec in options.subjects]
    return subject_prompt(options.path, subjects, [read_image(subject.image) for subject in subjects], prior,
                          options.scale, options.image_encoder or None, allow_pickle)


def _style_aligned(options: StyleAlignedOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    import torch

    from dreamsmith.guidance.style_aligned import StyleAligned
    from dreamsmith.image_files import read_image

    rgb = torch.as_tensor(read_image(options.image, "the style reference"))[None]
    with torch.no_grad():
        latent = prior.encode_images(rgb, sample=False)
    return StyleAligned(latent, prior.alphas_cumprod, prior.latent_channels, options.seed, options.adain_queries,
                        options.adain_keys, options.scale)


def _multimodal_prompt(options: MultimodalPromptOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.multimodal_prompt import load_prompt_images

    load_prompt_images(prior, options.aligner, options.refs, options.images)
    return Conditioner()  # the words are the prompt's; the model call is unchanged


def _instantid(options: InstantIDOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.face_embedding import read_face_embedding
    from dreamsmith.guidance.instantid import load_instantid

    return load_instantid(options.path, read_face_embedding(options.face_embedding), prior, options.landmarks,
                          options.scale, options.controlnet_scale, options.controlnet or None, allow_pickle)


def _photomaker(options: PhotoMakerOptions, prior: Any, allow_pickle: bool, prompt: str) -> Conditioner:
    from dreamsmith.guidance.photomaker import load_photomaker
    from dreamsmith.image_files import read_image

    images = [read_image(image, "a PhotoMaker ID image") for image in options.images]
    return load_photomaker(options.path, images, prior, prompt, options.trigger_word, options.style_strength,
                           options.lora_scale, allow_pickle)


CONDITIONERS: dict[str, tuple[type, Callable[[Any, Any, bool, str], Conditioner]]] = {
    "controlnet": (ControlNetOptions, _controlnet),
    "uni_controlnet": (UniControlNetOptions, _uni_controlnet),
    "lora": (LoRAOptions, _lora),
    "adapter": (AdapterOptions, _adapter),
    "regions": (RegionsOptions, _regions),
    "self_guidance": (SelfGuidanceOptions, _self_guidance),
    "ip_adapter": (IPAdapterOptions, _ip_adapter),
    "multi_subject": (MultiSubjectOptions, _multi_subject),
    "style_aligned": (StyleAlignedOptions, _style_aligned),
    "multimodal_prompt": (MultimodalPromptOptions, _multimodal_prompt),
    "instantid": (InstantIDOptions, _instantid),
    "photomaker": (PhotoMakerOptions, _photomaker),
}


def conditioner_options(spec: Any, path: str) -> tuple[str, Any]:
    """``(name, typed options)`` of one ``{name: ..., ...}`` entry, or a ConfigError naming ``path``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"'{path}' must be a mapping with a name, e.g. {{name: controlnet, model: DIR}}")
    name = spec["name"]
    if name not in CONDITIONERS:
        raise ConfigError(f"unknown conditioner '{name}' in '{path}'{nearest(str(name), list(CONDITIONERS))}; "
                          f"choose one of {', '.join(CONDITIONERS)}")
    options_class, _ = CONDITIONERS[name]
    options = build(options_class, {k: v for k, v in spec.items() if k != "name"}, f"{path}.")
    required = [f for f in ("model", "path") if hasattr(options, f) and not getattr(options, f)]
    if required:
        raise ConfigError(f"'{path}.{required[0]}' is required for the {name} conditioner")
    if hasattr(options, "check"):
        options.check(path)
    return name, options


def build_conditioners(
    specs: list[dict[str, Any]], prior: Any, allow_pickle: bool = False, prompt: str = ""
) -> list[Conditioner]:
    """The conditioners of a guidance config's ``conditioners`` list, for ``prior`` and the run's ``prompt``."""
    built = []
    for index, spec in enumerate(specs):
        name, options = conditioner_options(spec, f"guidance.conditioners.{index}")
        built.append(CONDITIONERS[name][1](options, prior, allow_pickle, prompt))
    return built


def conditioner_tokens(specs: list[dict[str, Any]]) -> list[str]:
    """The words the ``adapter`` conditioners of a ``conditioners`` list add to the model's vocabulary."""
    from dreamsmith.guidance.adapters import adapter_tokens

    return [token for spec in specs if isinstance(spec, dict) and spec.get("name") == "adapter"
            for token in adapter_tokens(spec.get("path", ""))]
