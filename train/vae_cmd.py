"""``python -m train vae``: train our VAE on the embedded data and save it to ``model.vae``.

    python -m train vae                                  # runs/vae (skipped when already there)
    python -m train vae --force --steps 400              # retrain
    python -m train vae --with model/large                # 8x VAE for 256-px tiles
    python -m train vae --set model.vae=runs/vae8 --set model.vae_downsample=8

Writes ``model.safetensors``, ``arch.json`` and ``metrics.json`` (reconstruction PSNR on the val
split, training time) into a temporary directory, then renames it into place.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from medq.files import atomic_dir

log = logging.getLogger("train.vae")


def add_arguments(p) -> None:
    p.add_argument("--preset", default="control",
                   help="preset whose model and data settings the VAE is trained for (default "
                        "control; `train weights` uses pretrain)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.vae=runs/vae8 (repeatable)")
    p.add_argument("--with", dest="overlays", action="append", default=[], metavar="OVERLAY",
                   help="overlay under configs/, e.g. model/large (repeatable)")
    p.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="optimizer steps (default 1000: ~1.5 min on 2 CPU cores, val PSNR ~29.5 dB at 64 px)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument(
        "--channels", type=int, default=32, help="VAE width at half resolution (default 32)"
    )
    p.add_argument(
        "--kl-weight", type=float, default=1e-6, help="weight of the KL term (default 1e-6)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    p.add_argument("--force", action="store_true", help="retrain even if the VAE directory exists")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


VAE_TILES = 6000
"""Training tiles drawn for the VAE (each gives its target and its condition): every image of
the default train split about three times, at other places."""


def load_images(cfg, n_tiles: int = VAE_TILES):
    """(train, val, source): float32 (N, 3, T, T) tiles of the model's tile size, cut as the
    flow's training tiles are (``medq.training.task.training_sets``: the development set's train
    photographs mixed in at ``data.mix_fraction``): targets and their conditions (the VAE encodes
    both during fine-tuning); val: the val split's fixed tiles."""
    import torch

    from medq.training.task import training_sets

    train_set, val_set, _ = training_sets(cfg)
    imgs = []
    for k in range(min(n_tiles, len(train_set))):
        item = train_set[k]
        imgs += [item["target"], item["input"].clamp(0, 1)]
    val = torch.stack([val_set[k]["target"] for k in range(len(val_set))])
    source = f"medq.data:{cfg.data.source}" + (
        f" + {cfg.data.mix_fraction:g} of {cfg.data.mix_root}" if cfg.data.mix_fraction else "")
    return torch.stack(imgs), val, source


def main(args) -> int:
    import torch

    from medq.config import ConfigError, load_config
    from medq.models.vae import ARCH_FILE, WEIGHTS_FILE, build_vae, save_vae
    from medq.models.vae_train import train_vae

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.preset, overrides=args.overrides, overlays=args.overlays)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    out = Path(cfg.model.vae)
    if (out / WEIGHTS_FILE).is_file() and (out / ARCH_FILE).is_file() and not args.force:
        print(f"VAE already at {out} (use --force to retrain)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, val, source = load_images(cfg)
    vae = build_vae(cfg.model, channels=args.channels)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc="vae", unit="step", file=sys.stderr)

    def on_step(step, loss):
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(mse=f"{loss:.2e}")

    start = time.perf_counter()
    metrics = train_vae(vae, train, val, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        kl_weight=args.kl_weight, seed=args.seed, on_step=on_step)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    metrics.update(
        {
            "train_seconds": round(seconds, 1),
            "data": source,
            "tile_size": cfg.model.tile_size,
            "image_size": cfg.data.image_size,
            "n_train_images": int(train.shape[0]),
            "n_val_images": int(val.shape[0]),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "kl_weight": args.kl_weight,
            "params": sum(p.numel() for p in vae.parameters()),
            "arch": vae.arch,
            "psnr": "mean per-image PSNR (dB, data range 1) of decode(encode(x)) clamped to [0, 1]",
        }
    )
    with atomic_dir(out) as tmp:
        save_vae(vae, tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"VAE saved to {out}: val PSNR {metrics['psnr_val']:.2f} dB, train PSNR "
          f"{metrics['psnr_train']:.2f} dB, {seconds:.0f} s on {source}")
    return 0
