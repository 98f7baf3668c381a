"""The aligner of multimodal prompts (KOSMOS-G, Pan et al. 2023): an image embedding -> K word embeddings.

KOSMOS-G's AlignerNet maps its MLLM's output into the space of the frozen CLIP text encoder, trained so the
text encoder's hidden states of an image match those of its caption (MSE). Here the aligner maps an image
encoder's embedding ``[B, D_img]`` to K *input* word embeddings ``[B, K, D]`` of the prior's text encoder,
which take the place of an ``<image:REF>`` in the prompt (:mod:`dreamsmith.guidance.multimodal_prompt`); the
encoder and the UNet run unchanged. Trained by ``tools/train_toyworld_aligner.py``: the text encoder's output
for "a <image of X>" is pulled onto its output for X's caption.

A folder holds ``config.json`` (``"_class_name": "ImageAligner"``) and ``model.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dreamsmith.errors import ModelLoadError

ALIGNER = "ImageAligner"


class ImageAligner(nn.Module):
    """``[B, image_dim]`` -> ``[B, tokens, width]``: an MLP (LayerNorm, linear, GELU, linear)."""

    def __init__(self, image_dim: int, width: int, tokens: int = 2, hidden_dim: int = 256) -> None:
        super().__init__()
        self.config = {"_class_name": ALIGNER, "image_dim": image_dim, "width": width, "tokens": tokens,
                       "hidden_dim": hidden_dim}
        self.tokens = tokens
        self.width = width
        self.mlp = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, tokens * width))

    def forward(self, image_embeds: Tensor) -> Tensor:
        weight = self.mlp[1].weight
        words = self.mlp(image_embeds.to(device=weight.device, dtype=weight.dtype))
        return words.reshape(image_embeds.shape[0], self.tokens, self.width)

    def save(self, folder: Path) -> None:
        """Write ``config.json`` and fp16 ``model.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.half().contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")


def read_aligner_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of an aligner folder (no torch model built); one-line errors."""
    path = Path(folder).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read the aligner config {path}: {error}") from None
    if config.get("_class_name") != ALIGNER:
        raise ModelLoadError(f"{path} is not an {ALIGNER} config (its _class_name is {config.get('_class_name')!r})")
    return config


def load_aligner(folder: str | Path, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> ImageAligner:
    """The frozen aligner in ``folder``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_aligner_config(folder)
    aligner = ImageAligner(config["image_dim"], config["width"], config["tokens"], config["hidden_dim"])
    try:
        aligner.load_state_dict(load_file(Path(folder).expanduser() / "model.safetensors"))
    except (OSError, RuntimeError, SafetensorError) as error:
        raise ModelLoadError(f"cannot load the aligner {folder}: {error}") from None
    return aligner.requires_grad_(False).eval().to(device=device, dtype=dtype)
