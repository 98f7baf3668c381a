"""Write the toyworld-ip image adapter's model card: samples.png, loss.png, image_prompt.json, README.md.

Each reference is a render of an object from one camera; the prior, prompted by that image alone (empty
text) through the engine's IP-Adapter conditioner, samples the object from two other cameras. Scored
against the truth from those cameras (silhouette IoU, mean foreground colour error) at image scale 1
and 0 (0: the base model with an empty prompt, which draws anything), from the same noise. A pink cube,
a colour no caption names, shows whether the image carries what text cannot.

    python tools/toyworld_ip_card.py --model dreamsmith/models/toyworld-ip
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toyworld_card import draw_loss, resumed_text, score  # noqa: E402
from toyworld_depth_card import draw, seeded  # noqa: E402
from train_toyworld_aligner import write_card_section  # noqa: E402

from dreamsmith.guidance.conditioner_registry import build_conditioners  # noqa: E402
from dreamsmith.guidance.loading import load_prior  # noqa: E402
from dreamsmith.guidance.sampling import ddim_sample  # noqa: E402
from dreamsmith.paths import embedded_model_path  # noqa: E402
from dreamsmith.renderers.cameras import Cameras  # noqa: E402
from dreamsmith.renderers.sdf_tracer import render_sdf  # noqa: E402
from dreamsmith.toyworld import world as tw  # noqa: E402

DEFAULT_MODEL = embedded_model_path("toyworld-ip")
REFERENCES = ("a red cube", "a green cube", "a blue torus", "a purple torus", "a yellow cone", "an orange cone",
              "a red capsule", "a white capsule", "a green sphere", "a gray sphere", "a blue cylinder",
              "a gray cylinder", "a pink cube")
"""Two of each shape ("a green cube", "a purple torus", "an orange cone", "a white capsule" are held out from
the prior's training) and a pink cube, a colour outside the world's eight."""
PINK = (1.0, 0.45, 0.75)
REFERENCE_VIEW = (30.0, 20.0)
TARGET_VIEWS = ((150.0, 20.0), (260.0, 55.0))
"""(azimuth, elevation) degrees: the reference image's camera and the two cameras sampled from it."""


def truth(text: str, cameras: Cameras) -> torch.Tensor:
    """Renders ``[B, H, W, 3]`` of a caption (or the pink cube) from ``cameras``."""
    if text == "a pink cube":
        sdf, albedo = tw.sdf_cube, torch.tensor(PINK)
    else:
        sdf, albedo = tw.caption_sdf(text)
    return render_sdf(sdf, cameras, albedo, tw.AMBIENT, tw.DIFFUSE, tw.BACKGROUND,
                      bound_radius=tw.BOUNDING_RADIUS).rgb


def views(pairs, resolution: int) -> Cameras:
    azimuth, elevation = torch.tensor(pairs).T
    return Cameras.from_spherical(azimuth, elevation, torch.tensor(tw.CAMERA_DISTANCE), torch.tensor(tw.FOVY_DEG),
                                  resolution)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--base", type=Path, default=embedded_model_path("toyworld"))
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--cfg", type=float, default=1.0, help="guidance scale between the image-prompted and the "
                        "unconditional branch (the base card's 1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder for the card (default: the model folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = load_prior(args.base)
    out = args.out or args.model
    reference_camera, cameras = views([REFERENCE_VIEW], prior.image_size), views(TARGET_VIEWS, prior.image_size)
    start = time.time()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as folder:
        for index, text in enumerate(REFERENCES):
            image = truth(text, reference_camera)[0]
            path = Path(folder) / f"{index}.png"
            Image.fromarray((image * 255).round().to(torch.uint8).numpy()).save(path)
            target = truth(text, cameras)
            samples = {}
            for scale in (0.0, 1.0):
                conditioners = build_conditioners([{"name": "ip_adapter", "path": str(args.model), "image": str(path),
                                                    "scale": scale}], prior, prompt="")
                samples[scale] = ddim_sample(prior, [""] * len(cameras), seeded(args.seed + index), args.steps,
                                             args.cfg, conditioners, cameras)
            row = {"reference": text, "held_out": text in tw.HELD_OUT_CAPTIONS or text == "a pink cube"}
            for scale, images in samples.items():
                iou, colour = score(images, target)
                row.update({f"iou_scale{scale:g}": iou, f"colour_error_scale{scale:g}": colour})
            results.append(row)
            rows.append((text, [image, *[t for v in range(len(cameras))
                                         for t in (target[v], samples[0.0][v], samples[1.0][v])]]))
    seconds = time.time() - start
    draw(rows, "reference | truth, scale 0, scale 1 (view 1) | the same (view 2)", label_width=140).save(
        out / "samples.png")
    summary = {key: round(statistics.mean(r[key] for r in results if r["reference"] != "a pink cube"), 3)
               for key in ("iou_scale0", "iou_scale1", "colour_error_scale0", "colour_error_scale1")}
    pink = next(r for r in results if r["reference"] == "a pink cube")
    (out / "image_prompt.json").write_text(json.dumps({"summary": summary, "references": results}, indent=1) + "\n")
    log = json.loads((args.model / "train_log.json").read_text())
    draw_loss(log["losses"]).save(out / "loss.png")
    write_readme(out, log, args, summary, pink, results, seconds)
    write_card_section(out)  # the multimodal-prompt aligner's section, kept when the card is rewritten
    print(json.dumps({"summary": summary, "pink": pink}))
    return summary


def write_readme(out: Path, log: dict, args: argparse.Namespace, summary: dict, pink: dict, results: list[dict],
                 seconds: float) -> None:
    losses = log["losses"]
    first, final = statistics.mean(losses[:50]), statistics.mean(losses[-100:])
    table = "\n".join(f"| {r['reference']}{' *' if r['held_out'] else ''} | {r['iou_scale0']:.3f} | "
                      f"{r['iou_scale1']:.3f} | {r['colour_error_scale0']:.3f} | {r['colour_error_scale1']:.3f} |"
                      for r in results)
    (out / "README.md").write_text(f"""# toyworld-ip

An IP-Adapter for the embedded `toyworld` prior: a small image encoder (`image_encoder/`) and decoupled
cross-attention layers (`ip_adapter.safetensors`, the published `image_proj.*` / `ip_adapter.*` layout), trained
on the frozen toyworld UNet. `dreamsmith generate --image REF.png` uses it when no `--ip-adapter` is given.

## Training

```
{log.get('command', '')}
```
{resumed_text(log)}
- data: renders of the toy world's captions; the encoder sees a render of an object from one camera, the UNet
  denoises a render of the same caption from another (so the adapter carries what the object is, not the view);
- {len(losses)} steps; the toyworld UNet and text encoder frozen; wall time
  {log.get('train_seconds', 0) / 60:.1f} min on a 2-core CPU machine shared with other work;
- loss (ε MSE): mean of the first 50 steps {first:.4f}, of the last 100 steps {final:.4f}.

![loss](loss.png)

## Does the image say what to draw?

`samples.png`: per reference, the image (camera at azimuth {REFERENCE_VIEW[0]:g}°, elevation {REFERENCE_VIEW[1]:g}°),
then for each of two other cameras ({', '.join(f'{a:g}°/{e:g}°' for a, e in TARGET_VIEWS)}): the truth, the
sample at image scale 0 and at scale 1, from the same noise, prompted by the image alone (empty text), DDIM
{args.steps} steps, guidance {args.cfg}. Silhouette IoU and colour error against the truth from the sampled
camera, mean over the two views and the 12 world captions (* = held out from the prior's training or a colour
outside the world):

| | scale 0 (no image) | scale 1 |
|---|---|---|
| silhouette IoU | {summary['iou_scale0']:.3f} | {summary['iou_scale1']:.3f} |
| colour error | {summary['colour_error_scale0']:.3f} | {summary['colour_error_scale1']:.3f} |

A pink cube ({PINK}, no caption names it): IoU {pink['iou_scale0']:.3f} → {pink['iou_scale1']:.3f}, colour error
{pink['colour_error_scale0']:.3f} → {pink['colour_error_scale1']:.3f}.

| reference | IoU, scale 0 | scale 1 | colour error, scale 0 | scale 1 |
|---|---|---|---|---|
{table}

![samples](samples.png)

(Sampling took {seconds:.0f} s.)

## Known limitations

- Trained on the toy world's 32 px renders only; an image of anything else is out of its distribution.
- The encoder is small and trained from scratch with the adapter; it is not a CLIP image encoder.
""")


if __name__ == "__main__":
    main()
