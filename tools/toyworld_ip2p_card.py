"""Write the editing model toyworld-ip2p's card: samples.png, loss.png, card.json, README.md.

Each edit is sampled from noise by DDIM through the ``ip2p`` guidance's own branches and combine (the
three-branch classifier-free guidance ε_∅ + s_I(ε_I − ε_∅) + s_T(ε_{I,T} − ε_I) with the source render as
the image condition, :mod:`dreamsmith.guidance.ip2p`), for the trained model and for the untrained one
(its init model widened with zero weights: the base, which cannot see the source), from the same noise.
Measured on the held-out (source, instruction) combinations of :mod:`dreamsmith.toyworld.edits` (never
trained on) and on the issue's two edits of "a red cube" (trained on): each edit against the toy world's
render of the target caption from the same camera (silhouette IoU and colour error as the base's card
scores samples), beside the source itself (no edit at all).

    python tools/toyworld_ip2p_card.py --model dreamsmith/models/toyworld-ip2p
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toyworld_card import draw_loss, resumed_text, score, to_tile  # noqa: E402

from dreamsmith.guidance.ip2p import IP2PConfig, IP2PGuidance  # noqa: E402
from dreamsmith.guidance.loading import load_prior  # noqa: E402
from dreamsmith.guidance.priors import DiffusionPrior  # noqa: E402
from dreamsmith.renderers.cameras import Cameras  # noqa: E402
from dreamsmith.renderers.outputs import RenderOutput  # noqa: E402
from dreamsmith.toyworld import world as tw  # noqa: E402
from dreamsmith.toyworld.data import render_caption  # noqa: E402
from dreamsmith.toyworld.edits import HELD_OUT_EDITS, apply_instruction, instruction_kind  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "dreamsmith" / "models" / "toyworld-ip2p"
SEEN_EDITS = (("a red cube", "make it blue"), ("a red cube", "turn it into a sphere"))
"""The issue's two edits; trained on (the held-out ones are the test)."""
CARD_ELEVATION = 20.0
COLUMNS = ("trained", "untrained", "no_edit")


def load_train_script():
    """tools/train_toyworld.py as a module (the untrained model is built with its own functions)."""
    path = Path(__file__).resolve().parent / "train_toyworld.py"
    spec = importlib.util.spec_from_file_location("train_toyworld", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def untrained_model(model_dir: Path, folder: Path, seed: int) -> Path:
    """The editing model at step 0, exported to ``folder``: the init model (``model_dir``'s base) widened by
    the training script's own ``widen_for_edits`` (zero weights on the source image; the new words'
    embeddings drawn as the training's were, after ``torch.manual_seed(seed)``)."""
    script = load_train_script()
    metadata = json.loads((model_dir / "dreamsmith.json").read_text())
    base = (model_dir / metadata["base"]).resolve()
    torch.manual_seed(seed)
    tokenizer = script.build_tokenizer(script.EDIT_WORDS, script.EDIT_TEXT_LENGTH)
    unet, text_encoder = script.load_init(base, metadata["camera_conditioning"] == "c2w16+rays")
    script.widen_for_edits(unet, text_encoder, tokenizer)
    script.export_model(folder, unet, text_encoder, tokenizer, None, metadata["resolution"], {}, base=base,
                        own_text=True, image_channels=script.IMAGE_CHANNELS)
    return folder


def card_cameras(n: int, resolution: int) -> Cameras:
    """``n`` cameras at elevation 20 deg, azimuths 30 deg + k 360/n (a cube turned off its faces)."""
    azimuth = 30.0 + torch.arange(n) * (360.0 / n)
    return Cameras.from_spherical(azimuth, torch.full((n,), CARD_ELEVATION), torch.tensor(tw.CAMERA_DISTANCE),
                                  torch.tensor(tw.FOVY_DEG), resolution)


def as_render(rgb: torch.Tensor) -> RenderOutput:
    """A render holding only ``rgb [B, H, W, 3]`` (what the ip2p guidance reads of the source)."""
    empty = rgb[..., :1] * 0
    return RenderOutput(rgb=rgb, opacity=empty + 1, depth=empty)


@torch.no_grad()
def ip2p_edit(prior: DiffusionPrior, instruction: str, source: torch.Tensor, cameras: Cameras, steps: int,
              image_guidance: float, text_guidance: float, generator: torch.Generator) -> torch.Tensor:
    """DDIM edits ``[B, H, W, 3]`` in [0, 1] of ``source [B, H, W, 3]`` (seen from ``cameras``) by
    ``instruction``, each step's ε the ip2p guidance's three-branch combination."""
    config = IP2PConfig(prompt=instruction, guidance_scale=text_guidance, image_guidance_scale=image_guidance)
    guidance = IP2PGuidance(prior, config)
    render = as_render(source)
    branches = guidance.branches(render, cameras, 0, source=render)
    scheduler = DDIMScheduler.from_config(prior.scheduler.config)
    scheduler.set_timesteps(steps)
    x = torch.randn(len(cameras), 3, prior.image_size, prior.image_size, generator=generator)
    for t in scheduler.timesteps:
        eps = guidance.predict(x, t.expand(len(cameras)), branches, render, cameras, 0)
        x = scheduler.step(guidance.combine(branches, eps, 0), t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)


def edit_scores(edited: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Silhouette IoU and colour error of edits ``[V, H, W, 3]`` against the target's truth, per view, meaned."""
    per_view = [score(edited[v:v + 1], target[v:v + 1]) for v in range(edited.shape[0])]
    return {"iou": statistics.mean(p[0] for p in per_view), "colour_error": statistics.mean(p[1] for p in per_view)}


def summary(results: list[dict], held_out: bool) -> dict[str, dict[str, float]]:
    """Per kind ("colour", "shape") and per column ("trained", "untrained", "no_edit"): mean IoU and colour error."""
    out: dict[str, dict[str, float]] = {}
    for kind in ("colour", "shape"):
        rows = [r for r in results if r["kind"] == kind and r["held_out"] == held_out]
        for column in COLUMNS:
            for metric in ("iou", "colour_error"):
                out.setdefault(kind, {})[f"{column}_{metric}"] = statistics.mean(r[column][metric] for r in rows)
    return out


def draw_edits(rows: list[tuple[str, str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
               scale: int = 3) -> Image.Image:
    """One row per edit: source caption, source, instruction, trained edit, untrained edit, target truth."""
    size = rows[0][2].shape[0] * scale
    label_w, text_w, pad = 120, 150, 4
    header = ("source", "", "instruction", "edited", "untrained", "target (truth)")
    width = label_w + size + text_w + 3 * (size + pad) + 10
    grid = Image.new("RGB", (width, len(rows) * (size + pad) + 20), "white")
    draw = ImageDraw.Draw(grid)
    xs = [4, label_w, label_w + size + 6, label_w + size + text_w, label_w + size + text_w + size + pad,
          label_w + size + text_w + 2 * (size + pad)]
    for x, text in zip(xs, header, strict=True):
        draw.text((x, 3), text, fill="black")
    for r, (source_text, instruction, source, edited, untrained, target) in enumerate(rows):
        y = 18 + r * (size + pad)
        held = (source_text, instruction) in HELD_OUT_EDITS
        colour = (200, 0, 0) if held else "black"
        draw.text((xs[0], y + size // 2 - 6), ("* " if held else "") + source_text, fill=colour)
        grid.paste(to_tile(source, scale), (xs[1], y))
        draw.text((xs[2], y + size // 2 - 6), f"{instruction} ->", fill=colour)
        for x, image in zip(xs[3:], (edited, untrained, target), strict=True):
            grid.paste(to_tile(image, scale), (x, y))
    return grid


def figures(kind_summary: dict[str, float], metric: str) -> str:
    """Markdown cells of one metric for the three columns."""
    digits = 3 if metric == "colour_error" else 2
    return " | ".join(f"{kind_summary[f'{column}_{metric}']:.{digits}f}" for column in COLUMNS)


def table(results: list[dict]) -> str:
    """Markdown rows, one per edit."""
    lines = []
    for r in results:
        cells = " | ".join(f"{r[c]['colour_error']:.3f} | {r[c]['iou']:.2f}" for c in COLUMNS)
        lines.append(f"| {r['source']} | {r['instruction']}{' (held out)' if r['held_out'] else ''} | {cells} |")
    return "\n".join(lines)


def grid_name(scales: str, first: bool) -> str:
    """The sample grid's file: samples.png for the first setting, samples-S_I-S_T.png for the others."""
    return "samples.png" if first else "samples-" + scales.replace(", ", "-") + ".png"


def measured_section(scales: str, results: list[dict], first: bool) -> str:
    """Markdown of the figures at one guidance setting: held-out summary, the issue's edits, per edit."""
    held, seen = summary(results, True), summary(results, False)
    c, s = held["colour"], held["shape"]
    n_colour, n_shape = (sum(r["kind"] == kind and r["held_out"] for r in results) for kind in ("colour", "shape"))
    return f"""### s_I, s_T = {scales}

![edits at s_I, s_T = {scales}]({grid_name(scales, first)})

Held-out combinations:

| edits | figure | trained | untrained | no edit |
|---|---|---|---|---|
| "make it X" ({n_colour}) | colour error vs the target colour | {figures(c, 'colour_error')} |
| "make it X" | IoU vs the (unchanged) silhouette | {figures(c, 'iou')} |
| "turn it into a Y" ({n_shape}) | IoU vs the target silhouette | {figures(s, 'iou')} |
| "turn it into a Y" | colour error vs the (unchanged) colour | {figures(s, 'colour_error')} |

The issue's edits (trained on): "a red cube" + "make it blue": colour error {seen['colour']['trained_colour_error']:.3f}
(untrained {seen['colour']['untrained_colour_error']:.3f}), IoU {seen['colour']['trained_iou']:.2f}; + "turn it into a
sphere": IoU to the red sphere {seen['shape']['trained_iou']:.2f} (untrained {seen['shape']['untrained_iou']:.2f},
no edit {seen['shape']['no_edit_iou']:.2f}).

Per edit (colour error | IoU for each column):

| source | instruction | trained | | untrained | | no edit | |
|---|---|---|---|---|---|---|---|
{table(results)}

"""


def write_readme(out: Path, model_dir: Path, log: dict, args: argparse.Namespace,
                 by_scales: dict[str, list[dict]], seconds: float) -> None:
    """The model card's text."""
    losses = log["losses"]
    first, final = statistics.mean(losses[:50]), statistics.mean(losses[-100:])
    minutes = (log["data_seconds"] + log["train_seconds"]) / 60
    metadata = json.loads((model_dir / "dreamsmith.json").read_text())
    own_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 2**20
    el_lo, el_hi = log["elevation_range"]
    held_list = ", ".join(f"{s} + \"{i}\"" for s, i in HELD_OUT_EDITS)
    measured = "\n".join(measured_section(scales, results, i == 0)
                         for i, (scales, results) in enumerate(by_scales.items()))
    first_scales = next(iter(by_scales))
    cut = log.get("resumes") and log["steps_planned"] > len(losses)
    cut_note = (f"\n(Planned for {log['steps_planned']} steps; resumed with fewer, the last `--steps` "
                f"{len(losses)}, to fit the time a shared 2-core machine gave: about 3.8 s a step there, "
                "against 1.1 s alone.)\n" if cut else "")
    (out / "README.md").write_text(f"""# toyworld-ip2p — the embedded editing model

The embedded prior `toyworld` (its card: `../toyworld/README.md`) fine-tuned into an InstructPix2Pix
model (Brooks et al. 2023): its UNet also reads the image being edited, as three more input channels
after the noisy image and the six camera-ray channels (the source render at 32x32 in [-1, 1]; zeros
for "no image"), and its prompt is an instruction: "make it {{colour}}" or "turn it into a {{shape}}".
It is the default model of `dreamsmith edit` (`guidance.name=ip2p`, which conditions each step on the
source asset's render from the same camera).

A delta on `toyworld`: this folder holds the fine-tuned `unet/`, `text_encoder/` and `tokenizer/`
(the base's tokenizer plus the words "make", "it", "turn", "into", the caption words keeping their ids;
8 tokens instead of 6, so "[BOS] turn it into a cylinder [EOS]" fits); `dreamsmith.json` names
`"base": "{metadata['base']}"` for the scheduler, says `"image_channels": {metadata['image_channels']}` (how the
engine tells, without torch, that this model edits) and lists the 14 instructions as its known prompts.
Size on disk: {own_mb:.1f} MB (fp16).

## Training

```
{log['command']}
```
{resumed_text(log)}{cut_note}
- fine-tuned from `{log['init_from']}`; at step 0 the new input weights are zero, so the model is the base
  exactly (tested bit for bit in `tests/test_toyworld_ip2p.py`);
- data (`dreamsmith.toyworld.edits`): {log['n_images']} pairs (render of caption A, instruction, render of
  caption B from the same camera, elevation U[{el_lo:g}, {el_hi:g}] deg, azimuth U[0, 360) deg): 45 % "make it
  X" (same shape, another colour), 45 % "turn it into a Y" (same colour, another shape), 10 % identity
  pairs (the instruction names what the object already is; the target is the source: they teach that
  what an instruction does not name is kept). Sources and targets are the base's 44 training
  captions; these {len(HELD_OUT_EDITS)} (source, instruction) combinations never appear: {held_list}.
  Rendered in {log['data_seconds']:.0f} s;
- {len(losses)} steps at batch {log['batch_size']}, the loss the base's (ε-MSE on the target, truncated-SNR
  weights up to {log['max_weight']:g}, {log['high_t_fraction']:g} of the t from the top 30 % of the schedule);
  instruction only, image only and both dropped {log['edit_dropout']:g} of the time each (InstructPix2Pix's
  5 %), the camera {log['camera_dropout']:g}; UNet and text encoder trained, AdamW lr {log['lr']:g},
  {log['warmup']} warmup steps then cosine decay, EMA {args.ema_note}, seed {log['seed']},
  {log['threads']} CPU thread;
- wall time {minutes:.1f} min of rendering and training on a 2-core CPU machine shared with other work;
- loss: mean of the first 50 steps {first:.4f}, of the last 100 steps {final:.4f}.

![loss](loss.png)

## Edits

`samples.png`: per edit, the source (truth render from elevation {CARD_ELEVATION:g} deg, azimuth 30 deg), the
instruction, the trained model's edit, the untrained model's edit (same noise), and the truth of the
target caption from the same camera; * and red: held out. DDIM {args.steps} steps from noise, the `ip2p`
guidance's branches and combine, s_I, s_T = {first_scales} (the grids of the other settings are under
"Measured").

![samples](samples.png)

## Measured

Every edit sampled from {args.views} cameras (elevation {CARD_ELEVATION:g} deg, azimuths
30 + k·{360 // args.views} deg), scored against the target caption's truth render from the same camera
as the base's card scores samples (colour error: |mean foreground colour − the truth's|, mean over
RGB; IoU: silhouette IoU), mean over cameras and edits. "untrained": the model at step 0 (the base,
which cannot see the source); "no edit": the source render itself.

{measured}
(Sampling took {seconds:.0f} s; the numbers are in `card.json`.)

## Known limitations

- 32x32 renders of 6 shapes in 8 colours: the model knows 14 instructions and nothing else; the
  prompt check refuses any other.
- The card samples 2D edits of ground-truth renders; an edit of a 3D asset (`dreamsmith edit`)
  distils these through score distillation, whose results are the edit benchmark's, not this card's.
- White: the base draws white objects black (its card), so "make it white" is not expected to work.
- The guidance scales matter: at the largest setting measured the DDIM samples of this pixel-space
  model collapse into discs of the instruction's colour (as the base's samples blot above text CFG 3,
  its card); compare the settings under "Measured" before choosing `--image-guidance` and
  `--text-guidance` for `dreamsmith edit`.
""")


def main(argv: list[str] | None = None) -> dict:
    """Sample, score, draw and write the card; returns the summaries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=40, help="DDIM steps")
    parser.add_argument("--views", type=int, default=4, help="cameras per edit")
    parser.add_argument("--scales", nargs="+", default=["1.25:1.5", "1:1", "1.5:3"],
                        help="S_I:S_T guidance settings to measure, the first drawn (InstructPix2Pix's own is "
                             "1.5:7.5; the pixel-space toy samples blot above CFG 3, see the base's card)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures and README (default: the model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or args.model
    out.mkdir(parents=True, exist_ok=True)
    log = json.loads((args.model / "train_log.json").read_text())
    args.ema_note = "(decay min(0.999, (1 + step) / (10 + step))) of the weights, which is what is exported"
    metadata = json.loads((args.model / "dreamsmith.json").read_text())
    cameras = card_cameras(args.views, metadata["resolution"])
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        priors = {"trained": load_prior(args.model),
                  "untrained": load_prior(untrained_model(args.model, Path(tmp) / "untrained", log["seed"]))}
    by_scales: dict[str, list[dict]] = {}
    for setting in args.scales:
        image_guidance, text_guidance = (float(x) for x in setting.split(":"))
        results, rows = [], []
        for source_text, instruction in (*HELD_OUT_EDITS, *SEEN_EDITS):
            target_text = apply_instruction(source_text, instruction)
            source, target = render_caption(source_text, cameras), render_caption(target_text, cameras)
            edits = {name: ip2p_edit(prior, instruction, source, cameras, args.steps, image_guidance, text_guidance,
                                     torch.Generator().manual_seed(args.seed))
                     for name, prior in priors.items()}
            results.append({"source": source_text, "instruction": instruction, "target": target_text,
                            "kind": instruction_kind(source_text, instruction),
                            "held_out": (source_text, instruction) in HELD_OUT_EDITS,
                            **{name: edit_scores(images, target) for name, images in edits.items()},
                            "no_edit": edit_scores(source, target)})
            rows.append((source_text, instruction, source[0], edits["trained"][0], edits["untrained"][0], target[0]))
            print(setting, json.dumps(results[-1]), flush=True)
        by_scales[f"{image_guidance:g}, {text_guidance:g}"] = results
        draw_edits(rows).save(out / grid_name(f"{image_guidance:g}, {text_guidance:g}", len(by_scales) == 1))
    seconds = time.time() - start
    draw_loss(log["losses"]).save(out / "loss.png")
    figures_by_scales = {scales: {"held_out": summary(results, True), "seen": summary(results, False)}
                         for scales, results in by_scales.items()}
    settings = {k: getattr(args, k) for k in ("steps", "views", "scales", "seed")}
    (out / "card.json").write_text(json.dumps({"settings": settings, "figures": figures_by_scales,
                                               "edits": by_scales}, indent=1) + "\n")
    write_readme(out, args.model, log, args, by_scales, seconds)
    print(json.dumps(figures_by_scales))
    return figures_by_scales


if __name__ == "__main__":
    main()
