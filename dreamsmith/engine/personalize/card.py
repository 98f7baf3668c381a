"""An adapter's model card: README.md with its settings and loss, loss.png, samples.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dreamsmith.guidance.adapters import AdapterInfo


def loss_curve(losses: list[float], points: int = 50) -> list[float]:
    """The per-step losses averaged over ``points`` equal windows (what the card stores and plots)."""
    if not losses:
        return []
    windows = np.array_split(np.asarray(losses, dtype=np.float64), min(points, len(losses)))
    return [round(float(window.mean()), 6) for window in windows]


def loss_plot(curve: list[float], width: int = 480, height: int = 240) -> np.ndarray:
    """A line plot ``[height, width, 3]`` uint8 of ``curve`` (white background, black line)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    margin = 20
    if len(curve) > 1:
        low, high = min(curve), max(curve)
        span = (high - low) or 1.0
        points = [(margin + i * (width - 2 * margin) / (len(curve) - 1),
                   height - margin - (value - low) / span * (height - 2 * margin)) for i, value in enumerate(curve)]
        draw.line(points, fill="black", width=2)
        draw.text((margin, 4), f"loss {high:.4g} .. {low:.4g}", fill="black")
    return np.asarray(image)


def card_text(info: AdapterInfo, images: list[str]) -> str:
    """The README.md of an adapter folder."""
    settings = "\n".join(f"| {key} | {value} |" for key, value in info.settings.items())
    files = "learned_embeds.safetensors (the token's embedding)"
    if info.lora_rank:
        files += f" and pytorch_lora_weights.safetensors (a rank-{info.lora_rank} UNet LoRA, diffusers/peft layout)"
    first, last = (info.losses[0], info.losses[-1]) if info.losses else (float("nan"), float("nan"))
    return f"""# {info.token}: a {info.class_word}, learned by {info.method}

Made by `dreamsmith personalize` from {len(images)} image(s): {', '.join(images)}.

Use it: `dreamsmith generate "a {info.token} {info.class_word}" --model {info.base_model} --adapter THIS_FOLDER`.
Files: {files}; adapter.json (what dreamsmith checks on loading).

| | |
|---|---|
| method | {info.method} |
| base model | {info.base_model} (fingerprint {info.base_model_hash or 'unknown'}) |
| token | {info.token} |
| class word | {info.class_word} |
| steps | {info.steps} |
{settings}

Training loss (mean per window, loss.png): {first:.4g} at the start, {last:.4g} at the end.

samples.png: the subject images on top; below, samples of "a {info.token} {info.class_word}" with the adapter,
then of the class prompt from the base model (the adapter at scale 0), same seeds.
"""


def write_card(folder: Path, info: AdapterInfo, images: list[str], samples: np.ndarray) -> None:
    """README.md, loss.png and samples.png into ``folder`` (a temporary folder renamed into place after)."""
    from dreamsmith.engine.previews import write_png

    (folder / "README.md").write_text(card_text(info, images))
    write_png(folder / "loss.png", loss_plot(info.losses))
    write_png(folder / "samples.png", samples)
