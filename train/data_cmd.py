"""``python -m train data``: generate (or read from cache) the embedded synthetic fundus dataset.

    python -m train data                                   # 2048 images at 256 px + the test set
    python -m train data --num-images 384 --size 128 --seed 0 --out runs/_cache
    python -m train data --preview /tmp/preview.png        # grid: synthetic rows, then real samples
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medq.config import DataConfig

REAL_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "fundus-samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DataConfig()
    p.add_argument("--num-images", type=int, default=d.num_images,
                   help="images of the train and val splits (default %(default)s)")
    p.add_argument("--size", type=int, default=d.image_size,
                   help="working size in pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="generator seed of the train and val images (default %(default)s)")
    p.add_argument("--test-seed", type=int, default=d.test_seed,
                   help="generator seed of the test set (default %(default)s)")
    p.add_argument("--num-test-images", type=int, default=d.num_test_images,
                   help="images of the test set (default %(default)s)")
    p.add_argument("--out", default=d.cache_dir, help="cache directory (DataConfig.cache_dir)")
    p.add_argument("--preview", type=Path, default=None, metavar="PNG",
                   help="write a grid of 8 generated images and the real samples (if present) here")


def _real_samples(size: int) -> list[np.ndarray]:
    from medq.data.fov import crop_to_fov, fov_mask
    from medq.data.imageio import load_rgb

    files = sorted((REAL_SAMPLES / "eyeq" / "original_img").glob("*.jpeg")) + \
        sorted((REAL_SAMPLES / "drive" / "images").glob("*.tif"))
    out = []
    for f in files[:4]:
        img = load_rgb(f, max_side=4 * size)
        sq, _ = crop_to_fov(img, fov_mask(img))
        out.append(np.asarray(Image.fromarray(sq).resize((size, size), Image.LANCZOS)))
    return out


def main(args) -> int:
    from medq.data import synthetic_images

    t = time.perf_counter()
    data = synthetic_images(args.seed, args.size, args.num_images, args.out)
    test = synthetic_images(args.test_seed, args.size, args.num_test_images, args.out)
    n = len(data["ids"])
    print(
        f"{n} synthetic images at {args.size}px (seed {args.seed}) and a test set of "
        f"{len(test['ids'])} (seed {args.test_seed}) in {Path(args.out)} "
        f"({time.perf_counter() - t:.1f} s); DR grades "
        f"{np.bincount(data['dr'], minlength=5).tolist()}"
    )
    if args.preview is not None:
        tiles = [data["images"][i] for i in range(min(8, n))]
        rows = [
            np.concatenate(tiles[i : i + 4], axis=1)
            for i in range(0, len(tiles) - len(tiles) % 4 or 1, 4)
        ]
        real = _real_samples(args.size)
        if real:
            real += [np.zeros_like(real[0])] * (4 - len(real))
            rows.append(np.concatenate(real[:4], axis=1))
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
        args.preview.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.preview)
        print(f"preview: {args.preview} (rows 1-2 synthetic, last row real samples)" if real
              else f"preview: {args.preview} (real samples not found at {REAL_SAMPLES})")
    return 0
