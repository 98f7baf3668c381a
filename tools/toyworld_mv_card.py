"""Write the multi-view toyworld prior's model card: samples.png, consistency.png, loss.png, README.md.

Samples groups of four views (shared elevation, azimuths 90 deg apart) per caption through the
engine's prior, whose multi-view attention applies to every call, and the single-view base prior
at the same four cameras from the same noise, each view on its own. Every view is scored against the
toy world's truth at its camera (silhouette IoU, as ``toyworld_card.py`` scores), and each group's
views against one another (mean silhouette IoU over its view pairs: every toyworld shape looks the
same after a quarter turn about +Y, so a consistent group shows one silhouette four times).

    python tools/toyworld_mv_card.py --model dreamsmith/models/toyworld-mv
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toyworld_card import draw_loss, foreground, resumed_text, to_tile, view_ious  # noqa: E402

from dreamsmith.guidance.loading import load_prior  # noqa: E402
from dreamsmith.guidance.priors import DiffusionPrior  # noqa: E402
from dreamsmith.guidance.sampling import ddim_sample  # noqa: E402
from dreamsmith.renderers.cameras import Cameras  # noqa: E402
from dreamsmith.toyworld import world as tw  # noqa: E402
from dreamsmith.toyworld.data import render_caption  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "dreamsmith" / "models" / "toyworld-mv"
CARD_CAPTIONS = ("a red cube", "a green cube", "a blue torus", "a purple torus", "a yellow cone", "an orange cone",
                 "a red capsule", "a white capsule", "a green sphere", "a gray sphere", "a blue cylinder",
                 "a gray cylinder")
"""Two of each shape; "a green cube", "a purple torus", "an orange cone" and "a white capsule" are held out."""
CARD_GROUPS = ((15.0, 20.0), (50.0, 60.0))
"""(azimuth of the first view, elevation) of each group, degrees: a cube turned off its faces; a view from
above, where the torus hole shows."""
VIEWS = 4


def group_cameras(resolution: int) -> Cameras:
    """``CARD_GROUPS`` as ``[G * 4]`` cameras, group-major, 90 deg apart within a group."""
    start, elevation = torch.tensor(CARD_GROUPS).T
    azimuth = (start[:, None] + torch.arange(VIEWS) * (360.0 / VIEWS)).reshape(-1)
    return Cameras.from_spherical(azimuth, elevation.repeat_interleave(VIEWS), torch.tensor(tw.CAMERA_DISTANCE),
                                  torch.tensor(tw.FOVY_DEG), resolution)


def pairwise_iou(masks: torch.Tensor) -> torch.Tensor:
    """``[G]`` mean silhouette IoU over the view pairs of each group of masks ``[G, V, H, W]``."""
    pairs = list(itertools.combinations(range(masks.shape[1]), 2))
    ious = [(masks[:, i] & masks[:, j]).sum((1, 2)) / (masks[:, i] | masks[:, j]).sum((1, 2)).clamp(min=1)
            for i, j in pairs]
    return torch.stack(ious, 1).mean(1)


def sample_groups(prior: DiffusionPrior, captions: list[str], cameras: Cameras, steps: int, cfg: float,
                  seed: int) -> torch.Tensor:
    """Samples ``[N, G * 4, H, W, 3]`` of every caption from every camera, one batch per caption (same
    noise for every model given the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([ddim_sample(prior, [text] * len(cameras), generator, steps, cfg, cameras=cameras)
                        for text in captions])


def group_scores(samples: torch.Tensor, truth: torch.Tensor) -> dict[str, list[float]]:
    """Per-view IoU against the truth ``[G * 4]`` and per-group view-to-view IoU ``[G]`` of one caption."""
    masks = foreground(samples).view(-1, VIEWS, *samples.shape[1:3])
    return {"view_iou": view_ious(samples, truth).tolist(), "pair_iou": pairwise_iou(masks).tolist()}


def spread(view_iou: list[float]) -> float:
    """Mean over groups of the standard deviation of a group's per-view IoUs (0: all views equally good)."""
    groups = [view_iou[i:i + VIEWS] for i in range(0, len(view_iou), VIEWS)]
    return statistics.mean(statistics.pstdev(g) for g in groups)


def summary(scores: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Means over captions: IoU against the truth, its per-group spread across views, view-to-view IoU."""
    return {"iou": statistics.mean(statistics.mean(s["view_iou"]) for s in scores.values()),
            "spread": statistics.mean(spread(s["view_iou"]) for s in scores.values()),
            "pair_iou": statistics.mean(statistics.mean(s["pair_iou"]) for s in scores.values())}


def draw_groups(rows: list[tuple[str, str, torch.Tensor, torch.Tensor]], scale: int = 3,
                ious: list[list[float]] | None = None) -> Image.Image:
    """One row per (caption, label, truth ``[H, W, 3]``, group ``[4, H, W, 3]``): label, truth, the four
    views; ``ious``: a number under each view."""
    size = rows[0][2].shape[0] * scale
    label_w, pad, text_h = 190, 3, 12 if ious else 0
    grid = Image.new("RGB", (label_w + 5 * (size + pad) + 10, len(rows) * (size + pad + text_h) + 18), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((label_w, 2), "truth | four views, azimuths 90 deg apart (* = held out)", fill="black")
    for r, (text, label, truth, views) in enumerate(rows):
        y = 16 + r * (size + pad + text_h)
        held = text in tw.HELD_OUT_CAPTIONS
        draw.text((4, y + size // 2 - 6), ("* " if held else "") + label, fill=(200, 0, 0) if held else "black")
        grid.paste(to_tile(truth, scale), (label_w, y))
        for k in range(views.shape[0]):
            x = label_w + (k + 1) * (size + pad) + 10
            grid.paste(to_tile(views[k], scale), (x, y))
            if ious:
                draw.text((x + 2, y + size), f"IoU {ious[r][k]:.2f}", fill="black")
    return grid


def write_readme(out: Path, model_dir: Path, log: dict, args: argparse.Namespace, mv: dict, base: dict,
                 scores: dict[str, dict[str, dict[str, list[float]]]], seconds: float) -> None:
    """The model card's text."""
    losses = log["losses"]
    first, final = statistics.mean(losses[:50]), statistics.mean(losses[-100:])
    minutes = (log["data_seconds"] + log["train_seconds"]) / 60
    metadata = json.loads((model_dir / "dreamsmith.json").read_text())
    own_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 2**20
    base_dir = (model_dir / metadata["base"]).resolve()
    base_mb = sum(f.stat().st_size for f in base_dir.rglob("*") if f.is_file()) / 2**20
    el_lo, el_hi = log["elevation_range"]
    groups = ", ".join(f"({a:g} + 0/90/180/270, {e:g})" for a, e in CARD_GROUPS)
    table = "\n".join(
        f"| {text}{' (held out)' if text in tw.HELD_OUT_CAPTIONS else ''} | "
        + " | ".join(f"{statistics.mean(s[m]['view_iou']):.2f} | {spread(s[m]['view_iou']):.3f} | "
                     f"{statistics.mean(s[m]['pair_iou']):.2f}" for m in ("mv", "base")) + " |"
        for text, s in scores.items())
    (out / "README.md").write_text(f"""# toyworld-mv — the embedded multi-view prior

The embedded prior `toyworld` (see its card, `../{base_dir.name}/README.md`) fine-tuned to denoise four
views of one object together (MVDream, Shi et al. 2023): in every self-attention of the UNet the tokens
of the four views of a group form one sequence (`(b f) l c -> b (f l) c`,
`dreamsmith.guidance.multiview`), so the views must agree on one object. It serves the `mvdream`
guidance and the `toy-mv` preset.

It is a delta on `toyworld`: this folder holds only the fine-tuned `unet/` (fp16 safetensors), and
`dreamsmith.json` names `"base": "{metadata['base']}"`, from which the loader takes the text encoder,
tokenizer and scheduler (frozen during this training, so they are the base's own), with
`"attention": "multiview", "views_per_group": {metadata['views_per_group']}` (the prior installs the
multi-view attention on every call) and the base's camera conditioning (`{metadata['camera_conditioning']}`).
Size on disk: {own_mb:.1f} MB (the base: {base_mb:.1f} MB).

## Training

```
{log['command']}
```
{resumed_text(log)}
- fine-tuned from `{log['init_from']}` (the UNet only; the text encoder frozen);
- data: {log['n_images']} renders in {log['n_images'] // VIEWS} groups of four, each group one of the 44
  training captions (the 4 held out never appear) seen from a shared elevation U[{el_lo:g}, {el_hi:g}] deg and
  distance 2.0, azimuths a start U[0, 360) deg plus 0, 90, 180, 270 deg: cameras drawn by the `mvdream`
  guidance's own sampler (`dreamsmith.engine.camera_sampling.sample_cameras`), rendered by
  `dreamsmith.toyworld.data` ({log['data_seconds']:.0f} s);
- {len(losses)} steps at batch {log['batch_size']} images ({log['batch_size'] // VIEWS} groups), one t per
  group, caption and camera dropped per group (p = {log['text_dropout']}, {log['camera_dropout']}), AdamW lr
  {log['lr']:g}, {log['warmup']} warmup steps then cosine decay, truncated-SNR weights up to {log['max_weight']:g},
  oversampling `{log['oversample'] or 'none'}`, {log['high_t_fraction']:g} of the groups' t from the
  top 30 % of the schedule, seed {log['seed']}, {log['threads']} CPU thread;
- wall time {minutes:.1f} min of rendering and training on a 2-core CPU machine shared with other work;
- loss (the same truncated-SNR-weighted epsilon loss as the base's card): mean of the first 50 steps
  {first:.4f}, of the last 100 steps {final:.4f}. A batch holds 12 objects, not 48, so the
  per-step loss is noisier than the base's.

![loss](loss.png)

## Samples

`samples.png`: one row per group: the ground truth from the group's first camera, then the four
views sampled together through the engine's prior (DDIM {args.steps} steps, text CFG {args.cfg}, camera
conditioning), groups at (azimuths, elevation) = {groups} deg.

![samples](samples.png)

## Consistency

The same captions and cameras sampled by the single-view `toyworld` from the same noise, each view on
its own, against `toyworld-mv`'s groups. Per caption: IoU = silhouette IoU of each view against the
truth from its camera (the samples' foreground as in the base's card), mean over views; spread = the
standard deviation of a group's per-view IoUs, mean over groups; view-to-view = silhouette IoU between
the views of a group, mean over its 6 pairs (every toyworld shape is symmetric under a quarter turn
about +Y, so the truth's four views are one silhouette: view-to-view 1.00).

| model | IoU | spread | view-to-view |
|---|---|---|---|
| toyworld-mv (groups of four) | {mv['iou']:.3f} | {mv['spread']:.3f} | {mv['pair_iou']:.3f} |
| toyworld (single views) | {base['iou']:.3f} | {base['spread']:.3f} | {base['pair_iou']:.3f} |

| caption | mv IoU | mv spread | mv view-to-view | toyworld IoU | toyworld spread | toyworld view-to-view |
|---|---|---|---|---|---|---|
{table}

`consistency.png`: per caption and group, the single-view model's four views (row "toyworld") above
`toyworld-mv`'s (row "mv"), each view's IoU against the truth under it.

![consistency](consistency.png)

(Sampling both models took {seconds:.0f} s.)

## Known limitations

- Every toyworld shape looks the same after a quarter turn about +Y, so the four views of each
  training group are one picture four times: what the multi-view attention learns here is to agree,
  not how an object changes between views 90 deg apart. A model that copies one view into the other
  three scores well on view-to-view IoU; the IoU against the truth per view is the check that the
  agreed view is also right.
- Cubes score lowest: the four views agree, but a group's yaw need not be the truth's (the 60 deg
  groups in `samples.png`). Whether this model reads its azimuth better than the base (whose card
  shows it does not) is not measured: the camera probe runs on single views.
- Sampled here at text CFG 1.0, like the base's card; at 4 the pixel-space DDIM samples of both models
  blot into discs and other shapes.
- Trained on 32x32 renders at camera distance 2.0 and fovy 40 deg only, like the base.
""")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Sample both models, score, draw and write the card; returns the two summaries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--base", type=Path, default=None,
                        help="the single-view model to compare with (default: the model's base)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--cfg", type=float, default=1.0, help="text guidance scale (the base card's 1.0: at 4 the "
                        "pixel-space DDIM samples of both models blot into discs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--captions", type=str, default="", help="comma-separated (default: CARD_CAPTIONS)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the figures and README (default: the model folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    metadata = json.loads((args.model / "dreamsmith.json").read_text())
    if metadata.get("views_per_group") != VIEWS:
        parser.error(f"{args.model} is not a {VIEWS}-view model (dreamsmith.json views_per_group)")
    base_dir = args.base or (args.model / metadata["base"])
    captions = args.captions.split(",") if args.captions else list(CARD_CAPTIONS)
    out = args.out or args.model
    out.mkdir(parents=True, exist_ok=True)
    cameras = group_cameras(metadata["resolution"])
    start = time.time()
    mv_prior, base_prior = load_prior(args.model), load_prior(base_dir)
    if mv_prior.views_per_group != VIEWS or base_prior.views_per_group != 1:
        parser.error(f"compare a {VIEWS}-view model with a single-view one")
    mv = sample_groups(mv_prior, captions, cameras, args.steps, args.cfg, args.seed)
    single = sample_groups(base_prior, captions, cameras, args.steps, args.cfg, args.seed)
    seconds = time.time() - start
    truths = {text: render_caption(text, cameras) for text in captions}
    scores = {text: {"mv": group_scores(mv[i], truths[text]), "base": group_scores(single[i], truths[text])}
              for i, text in enumerate(captions)}
    groups = range(len(CARD_GROUPS))
    rows = [(text, f"{text} ({CARD_GROUPS[g][1]:g} deg)", truths[text][g * VIEWS], mv[i, g * VIEWS:(g + 1) * VIEWS])
            for i, text in enumerate(captions) for g in groups]
    draw_groups(rows).save(out / "samples.png")
    compare, ious = [], []
    for i, text in enumerate(captions):
        for g in groups:
            views = slice(g * VIEWS, (g + 1) * VIEWS)
            for key, name, images in (("base", "toyworld", single), ("mv", "mv", mv)):
                label = f"{name}: {text} ({CARD_GROUPS[g][1]:g})"
                compare.append((text, label, truths[text][g * VIEWS], images[i, views]))
                ious.append(scores[text][key]["view_iou"][views])
    draw_groups(compare, ious=ious).save(out / "consistency.png")
    result = {"mv": summary({t: s["mv"] for t, s in scores.items()}),
              "base": summary({t: s["base"] for t, s in scores.items()})}
    (out / "consistency.json").write_text(json.dumps({"summary": result, "captions": scores}, indent=1) + "\n")
    log_path = args.model / "train_log.json"
    if log_path.exists():
        log = json.loads(log_path.read_text())
        draw_loss(log["losses"]).save(out / "loss.png")
        write_readme(out, args.model, log, args, result["mv"], result["base"], scores, seconds)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
