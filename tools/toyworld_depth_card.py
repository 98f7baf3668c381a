"""Write the toyworld-depth ControlNet's model card: samples.png, loss.png, control.json, README.md.

Samples each caption under the depth control of another object (and of its own) through the engine's
prior and ControlNet conditioner, at control scale 0 (the base model exactly) and 1, from the same
noise. A ControlNet that works puts the sample's silhouette on the control object's, keeping the
caption's colour: scored as silhouette IoU against the control object's truth and the caption's.

    python tools/toyworld_depth_card.py --model dreamsmith/models/toyworld-depth
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toyworld_card import draw_loss, foreground, resumed_text, to_tile  # noqa: E402

from dreamsmith.guidance.conditioner_registry import build_conditioners  # noqa: E402
from dreamsmith.guidance.conditioners import ConditionContext, control_image_from_render  # noqa: E402
from dreamsmith.guidance.loading import load_prior  # noqa: E402
from dreamsmith.guidance.sampling import ddim_sample  # noqa: E402
from dreamsmith.renderers.cameras import Cameras  # noqa: E402
from dreamsmith.renderers.sdf_tracer import render_sdf  # noqa: E402
from dreamsmith.toyworld import world as tw  # noqa: E402
from dreamsmith.toyworld.data import render_caption  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "dreamsmith" / "models" / "toyworld-depth"
PAIRS = (("a red sphere", "a red cube"), ("a blue cube", "a blue torus"), ("a green cylinder", "a green cone"),
         ("a yellow torus", "a yellow sphere"), ("an orange cone", "an orange capsule"),
         ("a purple capsule", "a purple cube"), ("a gray cube", "a gray cube"), ("a red torus", "a red torus"),
         ("a white cone", "a white cone"))
"""(caption, the object whose depth controls it): six across shapes, three of the caption's own shape."""
VIEWS = ((30.0, 20.0), (200.0, 50.0))
"""(azimuth, elevation) degrees of the two views of each pair."""


def cameras_for(resolution: int) -> Cameras:
    azimuth, elevation = torch.tensor(VIEWS).T
    return Cameras.from_spherical(azimuth, elevation, torch.tensor(tw.CAMERA_DISTANCE), torch.tensor(tw.FOVY_DEG),
                                  resolution)


def control_render(text: str, cameras: Cameras):
    """The toy world's render of ``text`` (colour, opacity, depth) from ``cameras``."""
    sdf, albedo = tw.caption_sdf(text)
    return render_sdf(sdf, cameras, albedo, tw.AMBIENT, tw.DIFFUSE, tw.BACKGROUND, bound_radius=tw.BOUNDING_RADIUS)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ious(samples: torch.Tensor, truth: torch.Tensor) -> list[float]:
    fg_s, fg_t = foreground(samples), foreground(truth, threshold=1e-6)
    return ((fg_s & fg_t).sum((1, 2)) / (fg_s | fg_t).sum((1, 2)).clamp(min=1)).tolist()


def draw(rows: list[tuple[str, list[torch.Tensor]]], header: str, label_width: int = 260,
         scale: int = 3) -> Image.Image:
    """One row per label, then its tiles ``[H, W, 3]`` left to right, ``header`` above the tiles."""
    size = rows[0][1][0].shape[0] * scale
    pad, columns = 2, max(len(tiles) for _, tiles in rows)
    grid = Image.new("RGB", (label_width + columns * (size + pad), len(rows) * (size + pad) + 18), "white")
    canvas = ImageDraw.Draw(grid)
    canvas.text((label_width, 2), header, fill="black")
    for r, (label, tiles) in enumerate(rows):
        y = 16 + r * (size + pad)
        canvas.text((4, y + size // 2 - 6), label, fill="black")
        for k, tile in enumerate(tiles):
            grid.paste(to_tile(tile, scale), (label_width + k * (size + pad), y))
    return grid


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--cfg", type=float, default=1.0, help="text guidance scale (the base card's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder for the card (default: the model folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    metadata = json.loads((args.model / "dreamsmith.json").read_text())
    prior = load_prior(args.model / metadata["base"])
    out = args.out or args.model
    cameras = cameras_for(prior.image_size)
    start = time.time()
    rows, results = [], []
    for index, (caption, control) in enumerate(PAIRS):
        render = control_render(control, cameras)
        truth_control, truth_caption = render.rgb, render_caption(caption, cameras)
        samples = {}
        for scale in (0.0, 1.0):
            conditioners = build_conditioners([{"name": "controlnet", "model": str(args.model), "source": "depth",
                                                "scale": scale}], prior, prompt=caption)
            samples[scale] = ddim_sample(prior, [caption] * len(cameras), seeded(args.seed + index), args.steps,
                                         args.cfg, conditioners, cameras, context=ConditionContext(render=render))
        depth = control_image_from_render(render, "depth", cameras).permute(0, 2, 3, 1)
        for v in range(len(cameras)):
            rows.append((f"{caption} <- {control} ({VIEWS[v][1]:g} deg)",
                         [depth[v], truth_caption[v], samples[0.0][v], samples[1.0][v]]))
        results.append({"caption": caption, "control": control, "same_shape": caption == control,
                        **{f"iou_control_scale{s:g}": statistics.mean(ious(samples[s], truth_control))
                           for s in samples},
                        **{f"iou_caption_scale{s:g}": statistics.mean(ious(samples[s], truth_caption))
                           for s in samples}})
    seconds = time.time() - start
    draw(rows, "control depth | caption truth | scale 0 | scale 1").save(out / "samples.png")

    def mean(key: str, same: bool) -> float:
        return round(statistics.mean(r[key] for r in results if r["same_shape"] == same), 3)

    summary = {kind: {key: mean(key, same) for key in ("iou_control_scale0", "iou_control_scale1")}
               for kind, same in (("other_shape", False), ("own_shape", True))}
    (out / "control.json").write_text(json.dumps({"summary": summary, "pairs": results}, indent=1) + "\n")
    log = json.loads((args.model / "train_log.json").read_text())
    draw_loss(log["losses"]).save(out / "loss.png")
    write_readme(out, log, args, summary, results, seconds)
    print(json.dumps(summary))
    return summary


def write_readme(out: Path, log: dict, args: argparse.Namespace, summary: dict, results: list[dict],
                 seconds: float) -> None:
    losses = log["losses"]
    first, final = statistics.mean(losses[:50]), statistics.mean(losses[-100:])
    table = "\n".join(f"| {r['caption']} | {r['control']} | {r['iou_control_scale0']:.3f} | "
                      f"{r['iou_control_scale1']:.3f} | {r['iou_caption_scale0']:.3f} | {r['iou_caption_scale1']:.3f} |"
                      for r in results)
    other, own = summary["other_shape"], summary["own_shape"]
    (out / "README.md").write_text(f"""# toyworld-depth

A depth ControlNet for the embedded `toyworld` prior (a diffusers `ControlNetModel` made from its UNet
with `from_unet`: the encoder copied, zero convolutions, a condition embedding that keeps the 32 px
resolution), trained on depth renders of the toy world. `dreamsmith texture MESH "a red cube" --control
depth=embedded:toyworld-depth` (or `guidance.conditioners`) feeds it the asset's own depth render.

## Training

```
{log['command']}
```
{resumed_text(log)}
- data: {log['n_images']} renders of the 48 captions at {log['resolution']}² from random cameras, each with
  the depth control image the conditioner makes from a render (depth / opacity, normalised per view, near
  bright, background black); the toyworld UNet and text encoder frozen;
- {len(losses)} steps of batch {log['batch_size']}, AdamW lr {log['lr']}, text dropout {log['text_dropout']},
  camera dropout {log['camera_dropout']}, seed {log['seed']}, {log['threads']} CPU thread, EMA weights shipped (fp16);
- {log['controlnet_params'] / 1e6:.2f} M parameters; wall time {log['train_seconds'] / 60:.1f} min of training
  (+ {log['data_seconds']:.0f} s of rendering) on a 2-core CPU machine shared with other work;
- loss (plain ε MSE): mean of the first 50 steps {first:.4f}, of the last 100 steps {final:.4f}.

![loss](loss.png)

## Does it follow the depth?

`samples.png`: each caption sampled under the depth of another object (and of its own), two views, DDIM
{args.steps} steps, text CFG {args.cfg}, the same noise at control scale 0 (the base model exactly) and 1.
Silhouette IoU of the samples against the control object's truth (the samples' foreground as in the
base's card), mean over the two views:

| pairs | scale 0 | scale 1 |
|---|---|---|
| caption under another shape's depth | {other['iou_control_scale0']:.3f} | {other['iou_control_scale1']:.3f} |
| caption under its own shape's depth | {own['iou_control_scale0']:.3f} | {own['iou_control_scale1']:.3f} |

| caption | control object | IoU to control, scale 0 | scale 1 | IoU to caption's shape, scale 0 | scale 1 |
|---|---|---|---|---|---|
{table}

![samples](samples.png)

(Sampling took {seconds:.0f} s.)

## Known limitations

- Trained on the toy world's 32 px renders at camera distance 2.0 and fovy 40 deg only, like the base.
- A caption under another shape's depth is outside what it was trained on (renders pair a caption with its
  own depth); the first table says how far the control carries it.
""")


if __name__ == "__main__":
    main()
