"""Loading MS-Diffusion checkpoints (MS-Diffusion/MS-Diffusion, weights ``doge1516/MS-Diffusion``) for a loaded prior.

The published ``ms_adapter.bin`` is ``{"image_proj": grounding resampler, "ms_adapter": {"1.to_k_ip.weight",
"1.to_v_ip.weight", "3....", ...}, "dummy_image_tokens": [1, 4, D]}``: the ``ms_adapter`` layers are numbered like
IP-Adapter's (position among all attention processors), so they load through
:func:`~dreamsmith.guidance.ip_adapter_loading.build_ip_adapter` with the grounding resampler as the projection.
A ``.safetensors`` conversion holds the same keys flattened (``image_proj.``/``ms_adapter.`` prefixes). Keys that
are missing or not expected are named in one line; an adapter for another base model is refused like IP-Adapter's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.grounding_resampler import grounding_resampler_from_state_dict
from dreamsmith.guidance.image_projection import check_keys
from dreamsmith.guidance.ip_adapter import IPAdapter
from dreamsmith.guidance.ip_adapter_loading import adapter_file, build_ip_adapter
from dreamsmith.guidance.loading import PICKLE_SUFFIXES, read_checkpoint
from dreamsmith.regions import Subject

PARTS = ("image_proj", "ms_adapter")
DUMMY_TOKENS = "dummy_image_tokens"


def read_ms_state(path: Path, allow_pickle: bool = False) -> dict[str, Any]:
    """``{"image_proj": ..., "ms_adapter": ..., "dummy_image_tokens": ...}`` of a published checkpoint."""
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(f"{path} is not an MS-Diffusion checkpoint (ms_adapter.bin or .safetensors)")
    flat = read_checkpoint(path, allow_pickle)
    state: dict[str, Any] = {part: dict(flat[part]) for part in PARTS if isinstance(flat.get(part), dict)}
    for key, value in flat.items():
        part, _, rest = key.partition(".")
        if part in PARTS and rest:
            state.setdefault(part, {})[rest] = value
    if DUMMY_TOKENS in flat:
        state[DUMMY_TOKENS] = flat[DUMMY_TOKENS]
    absent = [part for part in (*PARTS, DUMMY_TOKENS) if part not in state]
    if absent:
        raise ModelLoadError(f"{path} is not an MS-Diffusion checkpoint: it lacks {', '.join(absent)}")
    return state


def build_ms_adapter(state: dict[str, Any], unet: torch.nn.Module, name: str = "the MS-Diffusion adapter") -> IPAdapter:
    """The grounding resampler and image attention layers of ``state`` for ``unet`` (see the module doc)."""
    layers = state["ms_adapter"]
    numbers = {key.split(".")[0] for key in layers}
    expected = {f"{n}.{kind}.weight" for n in numbers for kind in ("to_k_ip", "to_v_ip")}
    try:
        check_keys(expected, set(layers), "ms_adapter")
    except ValueError as error:
        raise ModelLoadError(f"{name}: {error}") from None

    def projection(image_proj: dict[str, Tensor]) -> torch.nn.Module:
        resampler = grounding_resampler_from_state_dict(image_proj)
        dummy, width = state[DUMMY_TOKENS], resampler.norm_out.normalized_shape[0]
        if dummy.dim() != 3 or dummy.shape[-1] != width:
            raise ValueError(f"{DUMMY_TOKENS} is {tuple(dummy.shape)}, not [1, n, {width}]")
        return resampler

    return build_ip_adapter({"image_proj": state["image_proj"], "ip_adapter": layers}, unet, name, projection)


def phrase_embeddings(prior: Any, phrases: Sequence[str]) -> Tensor:
    """``[S, P]``: the text encoder's pooled output of each phrase (as the published pipeline), zeros for ''."""
    tokens = prior.tokenizer([phrase or "" for phrase in phrases], padding="max_length",
                             max_length=prior.max_prompt_tokens(), truncation=True, return_tensors="pt")
    with torch.no_grad():
        pooled = prior.text_encoder(input_ids=tokens.input_ids.to(prior.device)).pooler_output
    grounded = torch.tensor([bool(phrase) for phrase in phrases], device=pooled.device)
    return pooled * grounded.view(-1, 1).to(pooled)


def subject_prompt(path: str | Path, subjects: Sequence[Subject], images: Sequence[Any], prior: Any,
                   scale: float = 1.0, image_encoder: str | Path | None = None, allow_pickle: bool = False) -> Any:
    """The :class:`~dreamsmith.guidance.multi_subject.MultiSubjectConditioner` of the MS-Diffusion checkpoint at
    ``path`` for ``prior``: each subject's image (``[H, W, 3]`` in [0, 1]) encoded once, its phrase embedded once."""
    from dreamsmith.errors import ConfigError
    from dreamsmith.guidance.ip_adapter_loading import adapter_encoder
    from dreamsmith.guidance.multi_subject import MultiSubjectConditioner

    file = adapter_file(path)
    name = f"the MS-Diffusion adapter {file}"
    adapter = build_ms_adapter(read_ms_state(file, allow_pickle), prior.unet, name)
    adapter = adapter.to(device=prior.device, dtype=prior.dtype)
    encoder = adapter_encoder(adapter, file, image_encoder, prior, allow_pickle, name,
                              "MS-Diffusion reads CLIP ViT-bigG's penultimate hidden states")
    phrases = [subject.phrase for subject in subjects]
    phrase_dim = adapter.image_proj.phrase_dim
    embeds = phrase_embeddings(prior, phrases) if any(phrases) else torch.zeros(len(phrases), phrase_dim)
    if embeds.shape[-1] != phrase_dim:
        raise ConfigError(f"{name} reads {phrase_dim}-wide phrase embeddings, the model's text encoder gives "
                          f"{embeds.shape[-1]}: it is for another base model")
    with torch.no_grad():
        hidden = torch.cat([encoder.encode(torch.as_tensor(image, dtype=torch.float32)[None], True)
                            for image in images])
    lower = torch.tensor([subject.lower for subject in subjects], device=prior.device)
    upper = torch.tensor([subject.upper for subject in subjects], device=prior.device)
    grounded = torch.tensor([bool(phrase) for phrase in phrases], device=prior.device)
    return MultiSubjectConditioner(adapter, hidden, embeds.to(prior.device, prior.dtype), grounded, lower, upper,
                                   scale)
