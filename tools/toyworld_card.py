"""Write the toyworld prior's model card: samples.png, loss.png and README.md in the model folder.

Samples every caption (held-out ones marked) from a few cameras with DDIM and text CFG, next to the
ground-truth render from the first camera, and scores each sample against the ground truth from the
same camera (silhouette IoU, mean foreground colour error) so the card carries numbers.

    python tools/toyworld_card.py --model dreamsmith/models/toyworld
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dreamsmith.guidance.loading import load_prior  # noqa: E402
from dreamsmith.guidance.priors import DiffusionPrior  # noqa: E402
from dreamsmith.guidance.sampling import ddim_sample  # noqa: E402
from dreamsmith.renderers.cameras import Cameras  # noqa: E402
from dreamsmith.toyworld import world as tw  # noqa: E402
from dreamsmith.toyworld.camera_probe import camera_sensitivity  # noqa: E402
from dreamsmith.toyworld.data import render_caption  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "dreamsmith" / "models" / "toyworld"
# (azimuth, elevation) in degrees: spread over the training range
CARD_VIEWS = ((0.0, 20.0), (60.0, 0.0), (120.0, 40.0), (180.0, 20.0), (240.0, -10.0), (300.0, 50.0))
# (caption, azimuth, elevation) the camera probe runs on: a cube's faces turn with the azimuth, a
# torus's hole shows from above
PROBES = (("a red cube", 20.0, 20.0), ("a blue cube", 0.0, 40.0), ("a green torus", 0.0, 20.0))


PROBE_TIMESTEPS = (800, 900, 950)
"""High noise, where the image says little and the camera most: what score distillation's shapes rest on."""


def probe_rows(prior: DiffusionPrior) -> list[tuple[str, float, float, dict]]:
    """The camera probe on ``PROBES`` at ``PROBE_TIMESTEPS``: (caption, azimuth, elevation, result as a dict)."""
    rows = []
    for caption, azimuth, elevation in PROBES:
        wrong = caption.rsplit(" ", 1)[0] + " sphere"
        result = camera_sensitivity(prior, caption, wrong, azimuth, elevation, timesteps=PROBE_TIMESTEPS)
        rows.append((caption, azimuth, elevation, {"right": result.right, **result.turned,
                                                   "no camera": result.no_camera, "wrong caption": result.wrong_text}))
    return rows


def probe_table(rows: list[tuple[str, float, float, dict]]) -> str:
    """Markdown: each condition's noise-prediction error relative to the right camera's."""
    keys = list(rows[0][3])
    header = "| caption (azimuth, elevation) | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys)
    lines = [f"| {c} ({a:g}, {e:g}) | {r['right']:.5f} | "
             + " | ".join(f"{100 * (r[k] / r['right'] - 1):+.1f} %" for k in keys[1:]) + " |"
             for c, a, e, r in rows]
    return "\n".join([header, *lines])


def foreground(images: torch.Tensor, threshold: float = 0.15) -> torch.Tensor:
    """``[B, H, W]`` mask of pixels that differ from the image's own background (the median colour
    of its border pixels) by more than ``threshold`` in some channel, so that a tinted background
    is not taken for the object."""
    border = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], dim=1)
    background = border.median(dim=1).values
    return (images - background[:, None, None]).abs().amax(dim=-1) > threshold


def view_ious(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``[B]`` silhouette IoU of each of ``[B, H, W, 3]`` samples against its truth.

    The truth's background is exactly white, so its mask is exact; the samples' uses ``foreground``.
    """
    fg_s, fg_t = foreground(samples), foreground(truth, threshold=1e-6)
    return (fg_s & fg_t).sum((1, 2)) / (fg_s | fg_t).sum((1, 2)).clamp(min=1)


def score(samples: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Mean silhouette IoU (``view_ious``) and mean |mean foreground colour difference| of
    ``[B, H, W, 3]`` pairs."""
    fg_s, fg_t = foreground(samples), foreground(truth, threshold=1e-6)
    iou = view_ious(samples, truth).mean().item()
    mean_colour = [(img * m[..., None]).sum((1, 2)) / m.sum((1, 2)).clamp(min=1)[:, None]
                   for img, m in ((samples, fg_s), (truth, fg_t))]
    return iou, (mean_colour[0] - mean_colour[1]).abs().mean().item()


def to_tile(image: torch.Tensor, scale: int) -> Image.Image:
    """PIL tile from ``[H, W, 3]`` in [0, 1], enlarged ``scale`` times (nearest)."""
    array = (image * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    tile = Image.fromarray(array)
    return tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)


def draw_grid(rows: list[tuple[str, torch.Tensor, torch.Tensor]], scale: int) -> Image.Image:
    """One row per caption: label, ground truth ``[H, W, 3]``, then samples ``[K, H, W, 3]``."""
    size = rows[0][1].shape[0] * scale
    label_w, pad = 150, 2
    n_cols = 1 + rows[0][2].shape[0]
    grid = Image.new("RGB", (label_w + n_cols * (size + pad) + 12, len(rows) * (size + pad) + 18), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((label_w, 2), "truth | samples (* = held out)", fill="black")
    for r, (text, truth, samples) in enumerate(rows):
        y = 16 + r * (size + pad)
        held = text in tw.HELD_OUT_CAPTIONS
        draw.text((4, y + size // 2 - 6), ("* " if held else "") + text, fill=(200, 0, 0) if held else "black")
        grid.paste(to_tile(truth, scale), (label_w, y))
        for k in range(samples.shape[0]):
            grid.paste(to_tile(samples[k], scale), (label_w + (k + 1) * (size + pad) + 10, y))
    return grid


def draw_loss(losses: list[float], width: int = 640, height: int = 360, window: int = 50,
              what: str = "MSE on epsilon") -> Image.Image:
    """Training loss (``what``) per step (light) and its moving average (dark) on a log-scaled y axis."""
    values = torch.tensor(losses).clamp(min=1e-6)
    window = min(window, len(losses))
    smooth = torch.nn.functional.avg_pool1d(values[None, None], window, 1, padding=0).flatten()
    lo, hi = math.log10(values.min().item()), math.log10(values.max().item())
    left, right, top, bottom = 60, width - 10, 20, height - 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def xy(i: float, v: float) -> tuple[float, float]:
        x = left + (right - left) * i / max(1, len(values) - 1)
        return x, bottom - (bottom - top) * (math.log10(v) - lo) / max(hi - lo, 1e-6)

    draw.rectangle((left, top, right, bottom), outline="black")
    for exponent in range(math.floor(lo), math.ceil(hi) + 1):
        for mantissa in (1, 2, 5):
            v = mantissa * 10.0**exponent
            if 10**lo <= v <= 10**hi:
                y = xy(0, v)[1]
                draw.line((left - 4, y, right, y), fill=(225, 225, 225))
                draw.text((4, y - 6), f"{v:g}", fill="black")
    draw.line([xy(i, v) for i, v in enumerate(values.tolist())], fill=(170, 190, 230))
    draw.line([xy(i + window - 1, v) for i, v in enumerate(smooth.tolist())], fill=(20, 40, 160), width=2)
    draw.text((left, bottom + 8), f"step 0 .. {len(values)}   (mean of {window}: dark)", fill="black")
    draw.text((left + 4, 4), f"training loss ({what}, log scale)", fill="black")
    return image


def _mean(rows: list[tuple[float, float]], column: int) -> float:
    return sum(r[column] for r in rows) / max(1, len(rows))


def resumed_text(log: dict) -> str:
    """Markdown for the resumed parts of a run (none: empty)."""
    parts = [f"then, stopped after step {r['step']} and resumed (the learning-rate schedule follows the "
             f"new `--steps`):\n\n```\n{r['command']}\n```\n" for r in log.get("resumes", [])]
    return "\n".join(parts)


def write_readme(model_dir: Path, log: dict, results: dict[str, tuple[float, float]], args: argparse.Namespace,
                 sampling_seconds: float, probes: list[tuple[str, float, float, dict]],
                 baseline: tuple[str, list[tuple[str, float, float, dict]]] | None = None) -> None:
    """The model card's text."""
    rays = log.get("camera_rays", False)
    el_lo, el_hi = log.get("elevation_range", tw.ELEVATION_RANGE_DEG)
    camera_text = (
        "by the camera distance 2.0, through the UNet's class-embedding projection (`class_labels`), and "
        "as six Plücker ray channels per pixel (unit direction d and moment o x d, o / 2.0) after the "
        "image's three input channels (`camera_conditioning: c2w16+rays`)"
        if rays else "by the camera distance 2.0, through the UNet's class-embedding projection (`class_labels`)"
    )
    probe_t = ", ".join(map(str, PROBE_TIMESTEPS))
    before = (f"\n\nThe same probe on {baseline[0]}:\n\n{probe_table(baseline[1])}" if baseline else "")
    init = (f"- fine-tuned from the model folder `{log['init_from']}`"
            + (" (its first convolution given the six ray channels with zero weights, so training "
               "started from exactly that model)" if rays else "") + ";\n") if log.get("init_from") else ""
    losses = log["losses"]
    final = sum(losses[-100:]) / len(losses[-100:])
    minutes = (log["data_seconds"] + log["train_seconds"]) / 60
    train = [r for c, r in results.items() if c not in tw.HELD_OUT_CAPTIONS]
    held = [r for c, r in results.items() if c in tw.HELD_OUT_CAPTIONS]
    table = "\n".join(f"| {c}{' (held out)' if c in tw.HELD_OUT_CAPTIONS else ''} | {r[0]:.2f} | {r[1]:.3f} |"
                      for c, r in results.items())
    size_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 2**20
    (model_dir / "README.md").write_text(f"""# toyworld — the embedded prior

A camera-conditioned text-to-image diffusion model of the toyworld (see `TOYWORLD.md` in the project
docs): 6 shapes x 8 colours, {log['resolution']}x{log['resolution']} sRGB renders, white background.
It is a plain diffusers/transformers folder: `unet/` (`UNet2DConditionModel`), `text_encoder/`
(`CLIPTextModel`), `tokenizer/` (word-level `PreTrainedTokenizerFast`), `scheduler/`
(`DDPMScheduler`), weights in fp16 safetensors (load with `torch_dtype=torch.float32` on a CPU).
`dreamsmith.json` holds what a loader needs beyond diffusers (camera conditioning, resolution,
known prompts). Size on disk: {size_mb:.1f} MB.

## Model

- pixel space, 3 channels, epsilon prediction, DDPM 1000 steps, `squaredcos_cap_v2` betas (the
  linear schedule spends its last steps on pure noise at 32x32 in pixel space; cosine keeps every
  step informative — Nichol & Dhariwal 2021);
- UNet block channels {tuple(log['channels'])}, one layer per block, (cross-)attention only at 8x8
  and below, cross-attention dim 64 ({log['unet_params'] / 1e6:.2f} M parameters);
- text: `CLIPTextModel` hidden 64, 2 layers, 2 heads ({log['text_encoder_params'] / 1e3:.0f} k
  parameters) trained jointly from scratch; tokens padded to 6, so `""` is the unconditional prompt;
  "a"/"an" are swapped at random in training, so either article works;
- camera: c2w (OpenGL, camera looks down -Z) flattened row-major to 16 numbers, translation divided
  {camera_text};
- dropout for guidance: text -> `""` with p = {log.get('text_dropout', 0.1)}, camera -> zeros with
  p = {log.get('camera_dropout', 0.1)} (independently);
- the saved weights are the EMA (decay 0.999) of both networks.

## Training

```
{log['command']}
```
{resumed_text(log)}

{init}- data: {log['n_images']} renders of the 44 training captions (the 4 held out never appear),
  cameras with elevation U[{el_lo:g}, {el_hi:g}] deg, azimuth U[0, 360) deg, distance 2.0, fovy 40 deg, made
  by `dreamsmith.toyworld.data` with the project's SDF tracer ({log['data_seconds']:.0f} s);
- {len(losses)} steps at batch {log['batch_size']}, AdamW lr {log.get('lr', 1e-3):g}, {log.get('warmup', 100)} warmup
  steps then cosine decay, seed {log['seed']}, {log['threads']} CPU threads (resumed runs: their own `--threads`);
- wall time {minutes:.1f} min of rendering and training, summed over the runs above, on a 2-core CPU
  machine shared with other work;
- final loss (mean of the last 100 steps): {final:.4f}.

![loss](loss.png)

## Samples

`samples.png`: one row per caption (all 48; held-out rows marked `*` in red). First column: the
ground-truth render from the first camera; then DDIM {args.steps} steps, text CFG {args.cfg}, with camera
conditioning, from (azimuth, elevation) = {', '.join(f'({a:g}, {e:g})' for a, e in CARD_VIEWS)} deg.

![samples](samples.png)

Each sample is scored against the ground-truth render from its own camera (a sample's foreground:
pixels that differ from its own background, the median of its border pixels, by more than 0.15 in
some channel, so blotches count against it and the brightest faces of white objects are missed):
silhouette IoU and mean absolute difference of the mean foreground colour.
Mean over training captions: IoU {_mean(train, 0):.2f}, colour error {_mean(train, 1):.3f}; over the
held-out captions: IoU {_mean(held, 0):.2f}, colour error {_mean(held, 1):.3f}.
(Sampling all rows took {sampling_seconds:.0f} s.)

| caption | IoU | colour error |
|---|---|---|
{table}

## Does it use its camera?

The camera probe (`python -m dreamsmith.toyworld.camera_probe CAPTION --azimuth A --elevation E`):
the ground-truth render from one camera, noised at t = {probe_t} (8 draws each); the prior's
noise-prediction error with the right camera, then each other condition's error relative to it
(camera turned by "azimuth,elevation" degrees, camera dropped, the right camera with the caption's
shape swapped for a sphere, for scale). A prior that reads its camera predicts worst with a turned
one; +0 % everywhere means score distillation cannot tell one side of an object from another.

{probe_table(probes)}{before}
""")


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Sample, score and write the card; returns per-caption (IoU, colour error)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--cfg", type=float, default=4.0, help="text guidance scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--captions", type=str, default="", help="comma-separated subset (default: all 48)")
    parser.add_argument("--out-png", type=Path, default=None, help="samples image (default: in the model)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="an earlier model folder: the card adds its camera probe, for comparison")
    parser.add_argument("--baseline-name", type=str, default="the earlier model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = json.loads((args.model / "dreamsmith.json").read_text())
    if config.get("views_per_group", 1) > 1:
        parser.error(f"{args.model} is a multi-view model; write its card with tools/toyworld_mv_card.py")
    resolution = config["resolution"]
    captions = args.captions.split(",") if args.captions else list(tw.ALL_CAPTIONS)
    prior = load_prior(args.model)
    azimuth, elevation = torch.tensor(CARD_VIEWS).T
    cameras = Cameras.from_spherical(azimuth, elevation, torch.tensor(tw.CAMERA_DISTANCE),
                                     torch.tensor(tw.FOVY_DEG), resolution)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    rows, results = [], {}
    n_views = len(CARD_VIEWS)
    for first in range(0, len(captions), 16):
        chunk = captions[first:first + 16]
        batch_captions = [c for c in chunk for _ in range(n_views)]
        views = cameras[torch.arange(len(CARD_VIEWS)).repeat(len(chunk))]
        images = ddim_sample(prior, batch_captions, generator, args.steps, args.cfg, cameras=views)
        for i, text in enumerate(chunk):
            truth = render_caption(text, cameras)
            samples = images[i * n_views:(i + 1) * n_views]
            results[text] = score(samples, truth)
            rows.append((text, truth[0], samples))
        print(f"sampled {first + len(chunk)}/{len(captions)} captions ({time.time() - start:.0f}s)", flush=True)
    draw_grid(rows, scale=2).save(args.out_png or args.model / "samples.png")
    log_path = args.model / "train_log.json"
    if args.out_png is None and log_path.exists():
        log = json.loads(log_path.read_text())
        draw_loss(log["losses"]).save(args.model / "loss.png")
        baseline = ((args.baseline_name, probe_rows(load_prior(args.baseline))) if args.baseline else None)
        write_readme(args.model, log, results, args, time.time() - start, probe_rows(prior), baseline)
    for text, (iou, colour_error) in results.items():
        print(f"{text:20s} IoU {iou:.2f} colour error {colour_error:.3f}")
    return results


if __name__ == "__main__":
    main()
