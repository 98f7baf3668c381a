"""Self-guidance on the embedded prior: does a centroid target move the object in a 2D sample?

DDIM samples of one caption from one camera, the same noise with and without a self-guidance centroid term on
the shape's word (target x = ``--target-x``, y = 0.5), at several weights. Reports, per weight, the mean
horizontal centroid of the object's pixels (foreground against the sample's own background) and of the word's
cross-attention map at the last step, as fractions of the image width (0 left, 1 right), and how many samples
moved towards the target. Prints JSON.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/self_guidance_placement.py --samples 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from toyworld_card import foreground  # noqa: E402

from dreamsmith.guidance.conditioner_registry import build_conditioners  # noqa: E402
from dreamsmith.guidance.conditioners import ConditionContext  # noqa: E402
from dreamsmith.guidance.loading import load_prior  # noqa: E402
from dreamsmith.guidance.math import attention_centroid  # noqa: E402
from dreamsmith.renderers.cameras import Cameras  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "dreamsmith" / "models" / "toyworld"


def sample(prior, caption: str, cameras: Cameras, steps: int, cfg: float, seed: int, guide=None):
    """DDIM samples ``[B, H, W, 3]`` with text CFG, and the word map's x centroid ``[B]`` at the last step (None
    without a guide)."""
    scheduler = DDIMScheduler.from_config(prior.scheduler.config)
    scheduler.set_timesteps(steps)
    batch = len(cameras)
    embeds = prior.encode_prompts([caption] * batch + [""] * batch)
    x = torch.randn(batch, 3, prior.image_size, prior.image_size, generator=torch.Generator().manual_seed(seed))
    context = ConditionContext(branch_labels=("cond",) * batch + ("uncond",) * batch)
    conditioners = [guide] if guide is not None else []
    map_x = None
    for t in scheduler.timesteps:
        eps = prior.predict_noise(x.repeat(2, 1, 1, 1), t, embeds, cameras, conditioners=conditioners,
                                  context=context)
        if guide is not None:
            map_x = attention_centroid(guide.last_maps[:, 0])[:, 0]
        cond, uncond = eps.chunk(2)
        x = scheduler.step(uncond + cfg * (cond - uncond), t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1), map_x


def object_centroid_x(images: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean x (fraction of the width, pixel centres) of each sample's foreground pixels."""
    mask = foreground(images).float()
    xs = (torch.arange(images.shape[2]) + 0.5) / images.shape[2]
    return (mask.sum(1) * xs).sum(-1) / mask.sum((1, 2)).clamp(min=1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caption", default="a red cube")
    parser.add_argument("--word", default="cube")
    parser.add_argument("--target-x", type=float, default=0.2)
    parser.add_argument("--weights", type=float, nargs="+", default=[1e-6, 3.0, 10.0, 30.0],
                        help="self-guidance weights v (a tiny one reads the word map of an unguided sample)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prior = load_prior(MODEL)
    azimuth = torch.linspace(0, 315, args.samples)
    cameras = Cameras.from_spherical(azimuth, torch.full((args.samples,), 20.0), torch.tensor(2.0),
                                     torch.tensor(40.0), prior.image_size)
    started = time.time()
    with torch.no_grad():
        plain, _ = sample(prior, args.caption, cameras, args.steps, args.cfg, args.seed)
    results = {"caption": args.caption, "term": f"{args.word}:centroid={args.target_x},0.5", "samples": args.samples,
               "ddim_steps": args.steps, "cfg": args.cfg, "plain_object_x": float(object_centroid_x(plain).mean()),
               "by_weight": {}}
    for weight in args.weights:
        (guide,) = build_conditioners([{"name": "self_guidance", "terms": [results["term"]], "weight": weight}],
                                      prior, prompt=args.caption)
        guided, map_x = sample(prior, args.caption, cameras, args.steps, args.cfg, args.seed, guide)
        plain_x, guided_x = object_centroid_x(plain), object_centroid_x(guided)
        towards = ((guided_x - args.target_x).abs() < (plain_x - args.target_x).abs()).sum()
        results["by_weight"][str(weight)] = {
            "object_x": float(guided_x.mean()), "word_map_x_last_step": float(map_x.mean()),
            "moved_towards_target": f"{int(towards)}/{args.samples}",
            "object_pixels_ratio": float(foreground(guided).float().sum() / foreground(plain).float().sum()),
        }
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
