"""Train toyworld-ip, the embedded prior's image prompt adapter: a small image encoder and IP-Adapter layers on
the frozen toyworld UNet (Ye et al. 2023: only the projection and the new to_k_ip/to_v_ip are trained).

Each training pair is two renders of one caption from two random cameras: the encoder sees one, the UNet
denoises the other under that other's camera, so the adapter learns what the object is, not the view it was
shown from. The caption is dropped (``""``) with ``--text-dropout`` so an image alone works (image-to-3D with
no prompt), the image replaced by the zero image (a zero embedding, what the unconditional branch gets) with
``--image-dropout``, the camera with ``--camera-dropout``. to_k_ip/to_v_ip start as copies of each layer's
to_k/to_v (the paper's initialisation). Seeded; checkpoints every ``--checkpoint-every`` steps (``--resume``);
``--time-only`` prints seconds per step and exits unsaved. The folder written holds the adapter in the
published layout (``ip_adapter.safetensors``: ``image_proj.*``, ``ip_adapter.{n}.to_k_ip.weight``, ...) and
``image_encoder/`` beside it, as h94/IP-Adapter ships them, so it loads through the same code.

    python tools/train_toyworld_ip.py --steps 1500 --batch-size 48 --n-images 40000 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_toyworld import (  # noqa: E402
    add_run_arguments,
    camera_condition,
    camera_rays,
    command_line,
    ema_update,
    load_training_state,
    loss_weights,
    swap_in,
    training_loop,
)

from dreamsmith.guidance.attention import hooks_active  # noqa: E402
from dreamsmith.guidance.image_encoders import SmallImageEncoder  # noqa: E402
from dreamsmith.guidance.image_projection import ImageProjection  # noqa: E402
from dreamsmith.guidance.ip_adapter import (  # noqa: E402
    DecoupledCrossAttention,
    IPAdapter,
    IPAdapterLayer,
    cross_attention_layers,
)
from dreamsmith.guidance.loading import load_prior  # noqa: E402
from dreamsmith.toyworld.data import ToyworldDataset, generate_toyworld_dataset  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "dreamsmith" / "models"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=MODELS / "toyworld", help="the frozen model the adapter is for")
    parser.add_argument("--out", type=Path, default=MODELS / "toyworld-ip", help="adapter folder to write")
    add_run_arguments(parser, "runs/toyworld_ip_train", 1500)
    parser.add_argument("--tokens", type=int, default=4, help="image tokens (the published adapters use 4)")
    parser.add_argument("--embed-dim", type=int, default=128, help="the image encoder's embedding width")
    parser.add_argument("--encoder-channels", type=str, default="32,64,128")
    parser.add_argument("--text-dropout", type=float, default=0.5, help="caption -> '' probability")
    parser.add_argument("--image-dropout", type=float, default=0.05, help="image -> zero image probability")
    parser.add_argument("--camera-dropout", type=float, default=0.1, help="camera -> zeros probability")
    parser.add_argument("--max-weight", type=float, default=10.0, help="cap of the 1/SNR loss weight")
    return parser.parse_args(argv)


def build_adapter(unet: torch.nn.Module, embed_dim: int, tokens: int) -> IPAdapter:
    """A plain-projection IP-Adapter for ``unet``, its to_k_ip/to_v_ip copies of each layer's to_k/to_v."""
    width = int(unet.config.cross_attention_dim)
    modules = dict(unet.named_modules())
    names = cross_attention_layers(unet)
    layers = {}
    for number, name in names.items():
        attn = modules[name.removesuffix(".processor")]
        layer = IPAdapterLayer(attn.to_k.in_features, attn.to_k.out_features)
        layer.to_k_ip.weight.data.copy_(attn.to_k.weight)
        layer.to_v_ip.weight.data.copy_(attn.to_v.weight)
        layers[number] = layer
    return IPAdapter(ImageProjection(embed_dim, width, tokens), layers, names, reads_hidden_states=False)


def pairs(data: ToyworldDataset, by_caption: list[torch.Tensor], batch: int,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, reference)`` render indices ``[B]``: the reference another render of the target's caption
    (``by_caption``: each caption's render indices)."""
    target = torch.randint(len(data), (batch,), generator=generator)
    reference = torch.empty_like(target)
    for i, index in enumerate(target.tolist()):
        same = by_caption[int(data.caption_index[index])]
        draw = int(torch.randint(len(same) - 1, (1,), generator=generator)) if len(same) > 1 else 0
        reference[i] = same[draw + int(draw >= int((same == index).nonzero()[0]))] if len(same) > 1 else index
    return target, reference


def export_adapter(out: Path, adapter: IPAdapter, encoder: SmallImageEncoder, log: dict) -> None:
    """Write the adapter folder next to ``out`` and swap it in (fp16 weights), keeping the card's files."""
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "image_encoder").mkdir(parents=True)
    save_file({k: v.half().contiguous() for k, v in adapter.state_dict().items()}, tmp / "ip_adapter.safetensors")
    save_file({k: v.half().contiguous() for k, v in encoder.state_dict().items()},
              tmp / "image_encoder" / "model.safetensors")
    (tmp / "image_encoder" / "config.json").write_text(json.dumps(encoder.config, indent=2) + "\n")
    (tmp / "train_log.json").write_text(json.dumps(log) + "\n")
    swap_in(tmp, out)


def main(argv: list[str] | None = None) -> dict:
    """Train (or resume), export the adapter folder, return the training log."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    prior = load_prior(args.base)
    unet = prior.unet.requires_grad_(False).eval()
    resolution = prior.image_size
    t_start = time.time()
    data = generate_toyworld_dataset(args.n_images, resolution, args.seed)
    data_seconds = time.time() - t_start
    print(f"dataset: {len(data)} renders at {resolution}^2 in {data_seconds:.1f}s", flush=True)
    encoder = SmallImageEncoder(resolution, tuple(int(c) for c in args.encoder_channels.split(",")), args.embed_dim)
    adapter = build_adapter(unet, args.embed_dim, args.tokens)
    trained = torch.nn.ModuleDict({"encoder": encoder, "adapter": adapter})
    ema = copy.deepcopy(trained).requires_grad_(False)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed + 1)
    alphas_cumprod = prior.alphas_cumprod
    command = command_line(argv)
    log = {"command": command, "resumes": [], "base": str(args.base), "n_images": len(data),
           "resolution": resolution, "batch_size": args.batch_size, "steps_planned": args.steps, "seed": args.seed,
           "threads": args.threads, "data_seconds": data_seconds, "losses": [], "train_seconds": 0.0,
           "tokens": args.tokens, "embed_dim": args.embed_dim, "text_dropout": args.text_dropout,
           "image_dropout": args.image_dropout, "camera_dropout": args.camera_dropout, "lr": args.lr,
           "trained_params": sum(p.numel() for p in trained.parameters())}
    step = 0
    state_path = args.state_dir / "state.pt"
    modules = {"trained": trained, "ema": ema}
    if args.resume and state_path.exists():
        step, log = load_training_state(state_path, modules, optimizer, generator, command, data_seconds)
    captions = [""] + list(dict.fromkeys(data.captions(torch.arange(len(data)))))
    with torch.no_grad():
        caption_embeds = prior.encode_prompts(captions)  # the frozen text encoder, once per caption
    caption_row = {caption: row for row, caption in enumerate(captions)}
    rays = prior.ray_channels > 0
    by_caption = [(data.caption_index == i).nonzero().squeeze(-1) for i in range(int(data.caption_index.max()) + 1)]
    trained.train()

    def train_step(step: int) -> float:
        target, reference = pairs(data, by_caption, args.batch_size, generator)
        images = data.images[target].permute(0, 3, 1, 2).float() / 127.5 - 1
        reference_rgb = data.images[reference].float() / 255
        drop_text = torch.rand(args.batch_size, generator=generator) < args.text_dropout
        rows = [0 if drop else caption_row[caption]
                for caption, drop in zip(data.captions(target), drop_text.tolist(), strict=True)]
        keep_image = (torch.rand(args.batch_size, generator=generator) >= args.image_dropout).float()
        keep_camera = (torch.rand(args.batch_size, generator=generator) >= args.camera_dropout).float()
        noise = torch.randn(images.shape, generator=generator)
        t = torch.randint(0, prior.num_train_timesteps, (args.batch_size,), generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * images + (1 - a).sqrt() * noise
        if rays:
            noisy = torch.cat([noisy, camera_rays(data.c2w[target], resolution) * keep_camera.view(-1, 1, 1, 1)], 1)
        embeds = encoder.encode(reference_rgb) * keep_image[:, None]  # dropped: the zero image's embedding
        tokens = adapter.image_proj(embeds)
        hook = DecoupledCrossAttention(adapter.by_processor(), tokens, 1.0)
        with hooks_active(unet, [hook]):
            eps = unet(noisy, t, encoder_hidden_states=caption_embeds[rows],
                       class_labels=camera_condition(data.c2w[target]) * keep_camera[:, None]).sample
        weight = loss_weights(a.flatten(), args.max_weight)
        loss = (F.mse_loss(eps, noise, reduction="none").mean((1, 2, 3)) * weight).sum() / weight.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        optimizer.step()
        ema_update(ema, trained, min(args.ema_decay, (1 + step) / (10 + step)))
        return loss.item()

    def export(step: int) -> None:
        export_adapter(args.out, ema["adapter"], ema["encoder"], log)
        print(f"checkpoint at step {step} -> {args.out}", flush=True)

    return training_loop(step, log, args, optimizer, generator, state_path, modules, train_step, export)


if __name__ == "__main__":
    main()
