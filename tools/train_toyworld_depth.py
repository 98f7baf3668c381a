"""Train ``toyworld-depth``: a depth ControlNet for the embedded toyworld prior (TOYWORLD.md, issue 15).

The ControlNet is initialised from the toyworld UNet (``ControlNetModel.from_unet``: the encoder's weights
copied, zero convolutions; Zhang et al. 2023) and trained on renders of the toy world with their depth control
image, made exactly as the ControlNet conditioner makes it from an asset's render
(:func:`~dreamsmith.guidance.conditioners.control_image_from_render`: depth divided by opacity, normalised per
view over the foreground, near bright, background black). The toyworld UNet, text encoder and camera input stay
frozen; only the ControlNet learns. Its condition embedding keeps the image's resolution (one 16-channel level,
no downsampling): the toyworld model works in pixels, so the control image is read at the UNet's own size.
Captions are dropped half the time (as the ControlNet paper does), so the ControlNet learns to read the depth.
Seeded and reproducible (same seed, same threads); checkpoints are written atomically every
``--checkpoint-every`` steps and ``--resume`` continues from the last.

    python tools/train_toyworld_depth.py --steps 1500 --batch-size 32 --n-images 12000 --threads 1

``--time-only`` runs ``--steps`` steps (use a few), prints seconds per step and exits without saving.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_toyworld import (  # noqa: E402
    TEXT_LENGTH,
    camera_condition,
    camera_rays,
    command_line,
    ema_update,
    load_training_state,
    swap_articles,
    swap_in,
    training_loop,
)

from dreamsmith.toyworld.data import ToyworldDataset, generate_toyworld_dataset  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "dreamsmith" / "models"
CONDITION_CHANNELS = (16,)
"""The ControlNet's condition embedding: one level, no downsampling (the toyworld model works in pixels)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=MODELS / "toyworld", help="the toyworld model folder")
    parser.add_argument("--out", type=Path, default=MODELS / "toyworld-depth", help="ControlNet folder to write")
    parser.add_argument("--state-dir", type=Path, default=Path("runs/toyworld_depth_train"),
                        help="training checkpoints (for --resume)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-images", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (ControlNet's 1e-5 is for SD)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--text-dropout", type=float, default=0.5, help="caption -> '' probability")
    parser.add_argument("--camera-dropout", type=float, default=0.1, help="camera -> zeros probability")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--resume", action="store_true", help="continue from --state-dir")
    parser.add_argument("--time-only", action="store_true", help="print seconds per step and exit unsaved")
    return parser.parse_args(argv)


def load_base(folder: Path) -> tuple[UNet2DConditionModel, CLIPTextModel, PreTrainedTokenizerFast, DDPMScheduler,
                                      dict]:
    """The frozen toyworld UNet, text encoder, tokenizer, scheduler (fp32) and its ``dreamsmith.json``."""
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32).requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    metadata = json.loads((folder / "dreamsmith.json").read_text())
    return unet.eval(), text_encoder.requires_grad_(False).eval(), tokenizer, scheduler, metadata


def depth_batch(
    data: ToyworldDataset, tokenizer: PreTrainedTokenizerFast, batch_size: int, generator: torch.Generator,
    text_dropout: float, camera_dropout: float, with_rays: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """images ``[B, 3, H, W]`` in [-1, 1] (then the ray channels when ``with_rays``), depth control ``[B, 3, H,
    W]`` in [0, 1], token ids ``[B, L]``, camera ``[B, 16]`` (text and camera dropped at random)."""
    index = torch.randint(len(data), (batch_size,), generator=generator)
    images = data.images[index].permute(0, 3, 1, 2).float() / 127.5 - 1
    control = (data.depth_control[index].float() / 255)[:, None].expand(-1, 3, -1, -1)
    captions = swap_articles(data.captions(index), torch.rand(batch_size, generator=generator) < 0.3)
    drop = (torch.rand(batch_size, generator=generator) < text_dropout).tolist()
    captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
    ids = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt").input_ids
    keep_camera = (torch.rand(batch_size, generator=generator) >= camera_dropout).float()
    if with_rays:
        rays = camera_rays(data.c2w[index], images.shape[-1]) * keep_camera[:, None, None, None]
        images = torch.cat([images, rays], dim=1)
    return images, control, ids, camera_condition(data.c2w[index]) * keep_camera[:, None]


def export_controlnet(out: Path, controlnet: ControlNetModel, base: Path, train_log: dict) -> None:
    """Write the ControlNet folder (fp16 safetensors, its ``dreamsmith.json`` naming the base model and the
    control source) beside ``out`` and swap it in, keeping the card's files."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    copy.deepcopy(controlnet).half().save_pretrained(tmp, safe_serialization=True)
    metadata = {"base": os.path.relpath(base.resolve(), out.resolve()), "control_source": "depth"}
    (tmp / "dreamsmith.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (tmp / "train_log.json").write_text(json.dumps(train_log) + "\n")
    swap_in(tmp, out, ("README.md", "loss.png", "samples.png"))


def main(argv: list[str] | None = None) -> dict:
    """Train (or resume) the depth ControlNet, export its folder, return the training log."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    unet, text_encoder, tokenizer, scheduler, metadata = load_base(args.base)
    resolution = int(unet.config.sample_size)
    with_rays = metadata.get("camera_conditioning") == "c2w16+rays"
    t_start = time.time()
    data = generate_toyworld_dataset(args.n_images, resolution, args.seed, tuple(metadata["elevation_range"]),
                                     depth_control=True)
    data_seconds = time.time() - t_start
    print(f"dataset: {len(data)} renders with depth at {resolution}^2 in {data_seconds:.1f}s", flush=True)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITION_CHANNELS)
    ema = copy.deepcopy(controlnet).requires_grad_(False)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed + 1)
    alphas_cumprod = scheduler.alphas_cumprod
    command = command_line(argv)
    log = {"command": command, "resumes": [], "base": str(args.base), "n_images": len(data),
           "resolution": resolution, "batch_size": args.batch_size, "steps_planned": args.steps,
           "seed": args.seed, "threads": args.threads, "lr": args.lr, "text_dropout": args.text_dropout,
           "camera_dropout": args.camera_dropout, "data_seconds": data_seconds, "losses": [], "train_seconds": 0.0,
           "controlnet_params": sum(p.numel() for p in controlnet.parameters())}
    step = 0
    state_path = args.state_dir / "state.pt"
    modules = {"controlnet": controlnet, "ema": ema}
    if args.resume and state_path.exists():
        step, log = load_training_state(state_path, modules, optimizer, generator, command, data_seconds)
    controlnet.train()

    def train_step(step: int) -> float:
        inputs, control, ids, camera = depth_batch(data, tokenizer, args.batch_size, generator, args.text_dropout,
                                                   args.camera_dropout, with_rays)
        images, rays = inputs[:, :3], inputs[:, 3:]
        noise = torch.randn(images.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch_size,), generator=generator)
        a = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = torch.cat([a.sqrt() * images + (1 - a).sqrt() * noise, rays], dim=1)
        with torch.no_grad():
            text = text_encoder(ids).last_hidden_state
        down, mid = controlnet(noisy, timesteps, encoder_hidden_states=text, controlnet_cond=control,
                               class_labels=camera, return_dict=False)
        eps = unet(noisy, timesteps, encoder_hidden_states=text, class_labels=camera,
                   down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = F.mse_loss(eps, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        ema_update(ema, controlnet, min(args.ema_decay, (1 + step) / (10 + step)))
        return loss.item()

    def export(step: int) -> None:
        export_controlnet(args.out, ema, args.base, log)
        print(f"checkpoint at step {step} -> {args.out}", flush=True)

    return training_loop(step, log, args, optimizer, generator, state_path, modules, train_step, export)


if __name__ == "__main__":
    main()
