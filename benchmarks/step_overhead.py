"""The engine's overhead per optimization step over the diffusion-model call it cannot avoid.

Times (a) a full engine step (``Stage.step``: cameras, render, VAE encode, the classifier-free-guided
UNet call, regularizers, backward, optimizer) and (b) the bare classifier-free-guided UNet call alone,
with the exact inputs the step gave it (batched [cond, uncond], same shapes and dtype, no_grad as in
the step). Prints ONE JSON object on stdout (everything else goes to stderr):

    model, device, dtype, preset, resolution, image_size, batch, steps, warmup, threads,
    step_s, model_call_s, overhead_ratio = step_s / model_call_s, peak_gpu_memory_gb (CUDA: the
    largest memory torch allocated over the steps and the bare calls; None on the CPU),
    breakdown {render_s, encode_s, model_call_in_step_s, rest_s} (means per step, measured inside the
    same steps; rest = backward, optimizer, camera sampling, guidance math)

Models: ``--model DIR`` (a diffusers folder), ``--unet sd21`` (Stable-Diffusion-2.1-sized UNet, VAE and
text encoder with random weights, built in memory; random weights cost what real ones do; only
sensible on a GPU), or by default a tiny random SD-shaped pipeline built like the tests' fixture.
On CUDA every timed region is bracketed by ``torch.cuda.synchronize()``.

    python benchmarks/step_overhead.py --resolution 64 camera.resolution=64
    python benchmarks/step_overhead.py --device cuda --unet sd21 --resolution 64 --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.presets import preset_for_model
from dreamsmith.engine.run import resolve_device
from dreamsmith.engine.stage import Stage
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.priors import DiffusionPrior
from dreamsmith.guidance.prompts import VIEW_DIRECTIONS, view_prompt

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a delicious hamburger"


def _test_builders() -> Any:
    """The tests' tiny-model builders (tests/conftest.py), imported as a module."""
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest

    return conftest


def sd21_sized_prior(device: torch.device, work_dir: Path) -> DiffusionPrior:
    """A prior with Stable Diffusion 2.1 (base)'s component sizes and random weights.

    UNet: blocks (320, 640, 1280, 1280), 2 layers per block, cross-attention 1024, head dims
    (5, 10, 20, 20), linear projections, 64² latents; AutoencoderKL (128, 256, 512, 512) → 512² images;
    a 23-layer CLIP text encoder of width 1024 (OpenCLIP ViT-H's penultimate layer) with the tests'
    character-level tokenizer padded to 77. fp16 on CUDA, fp32 elsewhere, as ``load_prior``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(
        _test_builders().write_tiny_vocab(work_dir / "vocab"), model_max_length=77
    )
    with torch.device(device):  # random init on the device: seconds instead of a minute on the CPU
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=23,
                num_attention_heads=16,
                max_position_embeddings=77,
                hidden_act="gelu",
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval().to(device=device, dtype=dtype)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return DiffusionPrior(unet, scheduler, text_encoder, tokenizer, vae=vae)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timings:
    """Wall times of calls to wrapped functions, by name; the last inputs of each are kept."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, list[float]] = {}
        self.last_inputs: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.recording = False

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.recording:
                return function(*args, **kwargs)
            synchronize(self.device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            synchronize(self.device)
            self.seconds.setdefault(name, []).append(time.perf_counter() - start)
            self.last_inputs[name] = (args, kwargs)
            return result

        return timed

    def per_step(self, name: str, steps: int) -> float:
        return sum(self.seconds.get(name, [])) / steps


def time_bare_call(
    function: Callable[..., Any], inputs: tuple[tuple[Any, ...], dict[str, Any]], device: torch.device,
    warmup: int, repeats: int,
) -> float:
    """Mean seconds of ``function(*args, **kwargs)`` under no_grad, after ``warmup`` untimed calls."""
    args, kwargs = inputs
    times = []
    with torch.no_grad():
        for index in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            function(*args, **kwargs)
            synchronize(device)
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.mean(times)


def make_prior(args: argparse.Namespace, device: torch.device, work_dir: Path) -> tuple[DiffusionPrior, str, str]:
    """(prior, model name for the report, preset)."""
    if args.unet == "sd21":
        return sd21_sized_prior(device, work_dir), "sd21-sized (random weights)", args.preset or "dreamfusion"
    if args.model:
        from dreamsmith.paths import resolve_model

        prior = load_prior(resolve_model(args.model), device=device)
        return prior, args.model, args.preset or preset_for_model(args.model)
    folder = _test_builders().build_tiny_sd(work_dir / "tiny-sd")
    return load_prior(folder, device=device), "tiny-sd (random weights)", args.preset or "dreamfusion"


def warm_prompt_cache(stage: Stage) -> None:
    """Encode every view-dependent prompt first, so no timed step pays for the text encoder."""
    guidance = stage.guidance
    prompts = getattr(guidance, "prompts", None)
    config = getattr(guidance, "config", None)
    if prompts is None or config is None:
        return
    prompts.embed([view_prompt(config.prompt, direction) for direction in (None, *VIEW_DIRECTIONS)])
    prompts.embed([config.negative_prompt])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    overrides = ([f"camera.resolution={args.resolution}"] if args.resolution else []) + list(args.overrides)
    with tempfile.TemporaryDirectory(prefix="dreamsmith-bench-") as work_dir:
        prior, model_name, preset = make_prior(args, device, Path(work_dir))
        config = make_config(
            PROMPT, preset=preset, model=args.model, steps=args.start_step + args.warmup + args.steps,
            seed=args.seed, device=str(device), overrides=overrides,
        )
    stage_config = config.stages[-1]
    stage = Stage(stage_config, prior, config.prompt, device)
    warm_prompt_cache(stage)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings = Timings(device)
    unet_forward = prior.unet.forward
    prior.unet.forward = timings.wrap("model_call", unet_forward)
    stage.representation.renderer.forward = timings.wrap("render", stage.representation.renderer.forward)
    prior.encode_images = timings.wrap("encode", prior.encode_images)

    first = args.start_step
    for step in range(first, first + args.warmup):
        stage.step(step, generator)
    timings.recording = True
    step_times = []
    for step in range(first + args.warmup, first + args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        stage.step(step, generator)
        synchronize(device)
        step_times.append(time.perf_counter() - start)
    timings.recording = False
    prior.unet.forward = unet_forward

    model_call_s = time_bare_call(prior.unet, timings.last_inputs["model_call"], device, args.warmup, args.steps)
    step_s = statistics.mean(step_times)
    steps = args.steps
    render_s = timings.per_step("render", steps)
    encode_s = timings.per_step("encode", steps)
    in_step_s = timings.per_step("model_call", steps)
    sample = timings.last_inputs["model_call"][0][0]
    return {
        "model": model_name,
        "device": str(device),
        "dtype": str(prior.dtype).removeprefix("torch."),
        "preset": preset,
        "resolution": stage_config.camera.resolution,
        "image_size": prior.image_size,
        "batch": stage_config.camera.batch_size,
        "model_input": list(sample.shape),
        "sampler": stage.representation.renderer.sampler,
        "hash_grid": stage.representation.field.encoding.backend,
        "steps": steps,
        "warmup": args.warmup,
        "start_step": first,
        "threads": torch.get_num_threads(),
        "step_s": round(step_s, 6),
        "model_call_s": round(model_call_s, 6),
        "overhead_ratio": round(step_s / model_call_s, 3),
        "breakdown": {
            "render_s": round(render_s, 6),
            "encode_s": round(encode_s, 6),
            "model_call_in_step_s": round(in_step_s, 6),
            "rest_s": round(step_s - render_s - encode_s - in_step_s, 6),
        },
        "peak_gpu_memory_gb": (round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                               if device.type == "cuda" else None),
        "overrides": overrides,
        "torch": torch.__version__,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="diffusers model folder (default: a tiny random SD pipeline)")
    parser.add_argument("--unet", choices=["tiny", "sd21"], default="tiny",
                        help="sd21: SD-2.1-sized random UNet/VAE/text encoder (use on a GPU)")
    parser.add_argument("--resolution", type=int, default=None, help="render resolution (camera.resolution)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--start-step", type=int, default=0,
                        help="step index of the first warmup step (schedules depend on it)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--preset", default=None, help="preset (default: dreamfusion, or the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 timed steps after 1 warmup step")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for generate")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 3, 1
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.unet == "sd21" and args.model:
        parser.error("--unet sd21 builds its own model; do not pass --model")
    return args


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(measure(parse_args(argv))), flush=True)


if __name__ == "__main__":
    main()
