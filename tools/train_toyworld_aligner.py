"""Train the aligner of toyworld-ip, the embedded prior's multimodal prompts (``"a <image:REF.png>"``).

KOSMOS-G's alignment (Pan et al. 2023, AlignerNet): the frozen text encoder's *output* hidden states for
"a <image of X>" (the image's K aligned word embeddings in the placeholder's positions) are pulled onto its
output for X's caption "a {colour} {shape}" (MSE through the frozen text encoder). The image encoder is
toyworld-ip's (frozen); the images are renders of the 44 training captions from random cameras (the 4 held-out
captions never appear). Seeded; checkpoints every ``--checkpoint-every`` steps (``--resume``). At the end the
aligner is measured on fresh renders of every caption, held-out ones included (``eval`` in the log): the
output MSE and cosine to the true caption's hidden states, and to the nearest wrong caption's.

Writes ``<out>/`` (config.json, model.safetensors, train_log.json) and ``aligner_loss.png`` beside it.

    OMP_NUM_THREADS=1 python tools/train_toyworld_aligner.py --steps 3000 --threads 1
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
from toyworld_card import draw_loss  # noqa: E402
from train_toyworld import (  # noqa: E402
    add_run_arguments,
    command_line,
    load_training_state,
    swap_in,
    training_loop,
)

from dreamsmith.guidance.aligner import ImageAligner  # noqa: E402
from dreamsmith.guidance.image_encoders import load_image_encoder  # noqa: E402
from dreamsmith.guidance.loading import load_prior  # noqa: E402
from dreamsmith.guidance.textual_inversion import pseudo_words  # noqa: E402
from dreamsmith.toyworld import world as tw  # noqa: E402
from dreamsmith.toyworld.data import generate_toyworld_dataset, render_caption, sample_toyworld_cameras  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "dreamsmith" / "models"
ALIGNER_DIR = "aligner"
LOSS = "MSE of the text encoder's hidden states"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=MODELS / "toyworld", help="the frozen prior (its text encoder)")
    parser.add_argument("--encoder", type=Path, default=MODELS / "toyworld-ip" / "image_encoder",
                        help="the frozen image encoder the aligner reads")
    parser.add_argument("--out", type=Path, default=MODELS / "toyworld-ip" / "aligner", help="aligner folder to write")
    add_run_arguments(parser, "runs/toyworld_aligner_train", 3000)
    parser.set_defaults(batch_size=128, n_images=8000, threads=1, warmup=100, log_every=100, checkpoint_every=500)
    parser.add_argument("--tokens", type=int, default=2, help="word embeddings per image (K)")
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--eval-views", type=int, default=16, help="fresh renders per caption for the measurement")
    return parser.parse_args(argv)


def caption_text(caption: str) -> str:
    """The target caption "a {colour} {shape}" (the article of the placeholder prompt, "a", for every colour)."""
    colour, shape = tw.parse_caption(caption)
    return f"a {colour} {shape}"


def template_ids(tokenizer, tokens: int) -> tuple[torch.Tensor, int]:
    """Token ids ``[1, L]`` of "a" followed by ``tokens`` marker tokens (the unknown token), and the marker id."""
    marker = tokenizer.unk_token_id
    words = [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("a"), *[marker] * tokens, tokenizer.eos_token_id]
    length = tokenizer.model_max_length
    if len(words) > length:
        raise SystemExit(f"'a' and {tokens} image words do not fit the text encoder's {length} tokens")
    return torch.tensor([words + [tokenizer.pad_token_id] * (length - len(words))]), marker


def aligned_states(prior, aligner: ImageAligner, features: torch.Tensor, ids: torch.Tensor,
                   marker: int) -> torch.Tensor:
    """The text encoder's hidden states ``[B, L, D]`` of "a <image>" for image embeddings ``features [B, D_img]``."""
    batch_ids = ids.expand(len(features), -1)
    with pseudo_words(prior.text_encoder, batch_ids, marker, aligner(features)):
        return prior.text_encoder(input_ids=batch_ids).last_hidden_state


@torch.no_grad()
def encode_images(encoder, images: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Embeddings ``[N, D_img]`` of uint8 renders ``[N, H, W, 3]``."""
    return torch.cat([encoder.encode(images[i:i + chunk].float() / 255) for i in range(0, len(images), chunk)])


@torch.no_grad()
def measure(prior, encoder, aligner: ImageAligner, ids: torch.Tensor, marker: int, views: int, seed: int) -> dict:
    """Per caption (all 48, held out marked): over ``views`` fresh renders, the output MSE and cosine of the aligned
    image's hidden states to the true caption's and to the nearest wrong caption's, and how often the nearest of
    the 48 captions is the true one."""
    captions = list(tw.ALL_CAPTIONS)
    targets = prior.encode_prompts([caption_text(c) for c in captions]).float()
    generator = torch.Generator().manual_seed(seed + 12345)
    rows = []
    for index, caption in enumerate(captions):
        cameras = sample_toyworld_cameras(views, prior.image_size, generator)
        rgb = render_caption(caption, cameras)
        states = aligned_states(prior, aligner, encoder.encode(rgb), ids, marker).float()
        mse = ((states[:, None] - targets[None]) ** 2).mean((2, 3))  # [views, 48]
        cosine = F.cosine_similarity(states.flatten(1)[:, None], targets.flatten(1)[None], dim=-1)
        wrong = torch.ones(len(captions), dtype=torch.bool)
        wrong[index] = False
        nearest_wrong = mse[:, wrong].argmin(1)
        rows.append({
            "caption": caption, "held_out": caption in tw.HELD_OUT_CAPTIONS,
            "mse_true": mse[:, index].mean().item(), "mse_nearest_wrong": mse[:, wrong].min(1).values.mean().item(),
            "cosine_true": cosine[:, index].mean().item(),
            "cosine_nearest_wrong": cosine[:, wrong].gather(1, nearest_wrong[:, None]).mean().item(),
            "top1": (mse.argmin(1) == index).float().mean().item(),
        })

    def summary(selected: list[dict]) -> dict:
        return {key: sum(r[key] for r in selected) / len(selected)
                for key in ("mse_true", "mse_nearest_wrong", "cosine_true", "cosine_nearest_wrong", "top1")}

    return {"views": views, "held_out": summary([r for r in rows if r["held_out"]]),
            "train": summary([r for r in rows if not r["held_out"]]), "captions": rows}


def export_aligner(out: Path, aligner: ImageAligner, log: dict) -> None:
    """Write the aligner folder next to ``out`` and swap it in (never half written)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    aligner.save(tmp)
    (tmp / "train_log.json").write_text(json.dumps(log) + "\n")
    swap_in(tmp, out, card_files=())


SECTION = "## Multimodal prompts: the aligner"
RUN_FIGURES = "multimodal_prompt.json"
"""The card's measured run of a multimodal prompt (written by hand from ``dreamsmith.toyworld.score``), if any."""


def card_section(folder: Path) -> str:
    """The model card's section on the aligner in ``folder`` (its ``train_log.json``), "" when there is none."""
    log_file = folder / ALIGNER_DIR / "train_log.json"
    if not log_file.is_file():
        return ""
    log = json.loads(log_file.read_text())
    losses, evaluation = log["losses"], log["eval"]
    resumed = "".join(f"\nthen, stopped after step {r['step']} and resumed:\n\n```\n{r['command']}\n```\n"
                      for r in log["resumes"])
    rows = "\n".join(
        f"| {r['caption']}{' *' if r['held_out'] else ''} | {r['mse_true']:.4f} | {r['mse_nearest_wrong']:.4f} | "
        f"{r['cosine_true']:.3f} | {r['cosine_nearest_wrong']:.3f} | {r['top1']:.2f} |"
        for r in evaluation["captions"] if r["held_out"])
    summary = "\n".join(
        f"| {name} | {s['mse_true']:.4f} | {s['mse_nearest_wrong']:.4f} | {s['cosine_true']:.3f} | "
        f"{s['cosine_nearest_wrong']:.3f} | {s['top1']:.2f} |"
        for name, s in (("held out (4 captions)", evaluation["held_out"]), ("training (44)", evaluation["train"])))
    run = ""
    if (folder / RUN_FIGURES).is_file():
        figures = json.loads((folder / RUN_FIGURES).read_text())
        run = "\n" + figures["text"] + "\n"
    return f"""{SECTION}

`aligner/` maps the image encoder's embedding (128) to {log['tokens']} input word embeddings of toyworld's text
encoder (an MLP, {log['trained_params']} parameters): `dreamsmith generate "a <image:REF.png>"` puts them in the
placeholder's place (KOSMOS-G's interface; the text encoder and the UNet run unchanged). Trained with KOSMOS-G's
alignment: the frozen text encoder's output hidden states for "a <image of X>" are pulled onto those of X's caption
"a {{colour}} {{shape}}" (MSE through the frozen text encoder; the image encoder frozen too).

```
{log['command']}
```
{resumed}
- data: {log['n_images']} renders (32 px, random cameras) of the 44 training captions; the 4 held-out captions
  ({', '.join(log['held_out_captions'])}) never appear;
- {len(losses)} steps, batch {log['batch_size']}; wall time {(log['train_seconds'] + log['data_seconds']) / 60:.1f}
  min on one core of a 2-core CPU machine shared with other work;
- loss (hidden-state MSE): mean of the first 50 steps {sum(losses[:50]) / 50:.4f}, of the last 100 steps
  {sum(losses[-100:]) / 100:.5f}.

![aligner loss](aligner_loss.png)

Measured on {evaluation['views']} fresh renders per caption from random cameras (not the training renders), with the
shipped fp16 weights: the text encoder's output for "a <image>" against the true caption's (a render of a purple
torus against "a purple torus") and against the nearest wrong caption's (of all 48); top-1: how often the nearest
of the 48 captions is the true one (* = held out).

| captions | MSE, true | MSE, nearest wrong | cosine, true | cosine, nearest wrong | top-1 |
|---|---|---|---|---|---|
{summary}
{rows}
{run}
Retrain the aligner whenever the image encoder is retrained (`tools/train_toyworld_ip.py` rewrites the folder
without it).
"""


def write_card_section(folder: Path) -> None:
    """Put :func:`card_section` into ``folder``'s README.md, replacing the section it had."""
    readme = folder / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start].rstrip("\n") + ("\n\n" + text[end + 1:] if end >= 0 else "\n")
    known = text.find("## Known limitations")
    section = card_section(folder)
    text = text[:known] + section + "\n" + text[known:] if known >= 0 else text.rstrip("\n") + "\n\n" + section
    readme.write_text(text)


def main(argv: list[str] | None = None) -> dict:
    """Train (or resume), export the aligner folder with its measurement, return the training log."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    prior = load_prior(args.base)
    prior.text_encoder.requires_grad_(False).eval()
    encoder = load_image_encoder(args.encoder)
    t_start = time.time()
    data = generate_toyworld_dataset(args.n_images, prior.image_size, args.seed)
    features = encode_images(encoder, data.images)
    data_seconds = time.time() - t_start
    print(f"dataset: {len(data)} renders at {prior.image_size}^2, encoded, in {data_seconds:.1f}s", flush=True)
    with torch.no_grad():
        targets = prior.encode_prompts([caption_text(c) for c in tw.TRAIN_CAPTIONS])  # [44, L, D]
    ids, marker = template_ids(prior.tokenizer, args.tokens)
    width = prior.text_encoder.get_input_embeddings().embedding_dim
    aligner = ImageAligner(features.shape[1], width, args.tokens, args.hidden_dim)
    optimizer = torch.optim.AdamW(aligner.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed + 1)
    command = command_line(argv)
    log = {"command": command, "resumes": [], "base": str(args.base), "encoder": str(args.encoder),
           "n_images": len(data), "batch_size": args.batch_size, "steps_planned": args.steps, "seed": args.seed,
           "threads": args.threads, "data_seconds": data_seconds, "losses": [], "train_seconds": 0.0,
           "tokens": args.tokens, "hidden_dim": args.hidden_dim, "lr": args.lr,
           "held_out_captions": list(tw.HELD_OUT_CAPTIONS),
           "trained_params": sum(p.numel() for p in aligner.parameters())}
    step = 0
    state_path = args.state_dir / "state.pt"
    modules = {"aligner": aligner}
    if args.resume and state_path.exists():
        step, log = load_training_state(state_path, modules, optimizer, generator, command, data_seconds)
    aligner.train()

    def train_step(step: int) -> float:
        index = torch.randint(len(data), (args.batch_size,), generator=generator)
        states = aligned_states(prior, aligner, features[index], ids, marker)
        loss = F.mse_loss(states, targets[data.caption_index[index]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    def export(step: int) -> None:
        if step == args.steps:
            shipped = copy.deepcopy(aligner).eval().half().float()  # the fp16 weights the folder holds
            log["eval"] = measure(prior, encoder, shipped, ids, marker, args.eval_views, args.seed)
            draw_loss(log["losses"], what=LOSS).save(args.out.parent / "aligner_loss.png")
            print("held out:", json.dumps(log["eval"]["held_out"]), flush=True)
            print("train:", json.dumps(log["eval"]["train"]), flush=True)
        export_aligner(args.out, aligner, log)
        if step == args.steps:
            write_card_section(args.out.parent)
        print(f"checkpoint at step {step} -> {args.out}", flush=True)

    return training_loop(step, log, args, optimizer, generator, state_path, modules, train_step, export)


if __name__ == "__main__":
    main()
