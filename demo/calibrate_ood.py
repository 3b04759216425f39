"""Calibrate the report out-of-distribution check (``medq.report_ood``) and write its JSON.

    python -m demo calibrate-ood                      # writes demo/report_ood.json (committed)
    python -m demo calibrate-ood --config runs/ssim_v3-1a2b3c4d/config.toml --sizes 64,256

Fits, per analysis size, the distance to the synthetic *training* images of the data config the
report model learnt from (the base model's, ``weights/base/config.toml``, by default; its first
``--reference`` training-split images), sets the threshold at ``--margin`` times the largest
distance of held-out synthetic images (the validation split plus ``--held-out`` further training
images), and checks the development photographs (``--development``: DRIVE, 20 real photographs
from a camera the report model never saw) against it. Writes nothing, and exits 1 naming the
photograph, when one of them is not above the threshold: such a measure cannot tell real from
synthetic. The test split is never looked at here: ``tests/test_demo_ood.py`` checks that it
lands below the threshold and the development photographs above it.

Re-run it when the generator (``medq.data.synthetic.GENERATOR_VERSION``) or the feature
definition (``medq.report_ood.FEATURE_VERSION``) changes: the page treats a calibration of other
versions as stale and shows no report as a finding. Rebuilding the weights does not call for it:
the measure reads images only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).with_name("report_ood.json")
DEFAULT_DEVELOPMENT = Path("../shared/fundus-samples/drive-train")


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected pixel sizes such as "
                                         "64,128,256") from None
    if not sizes or min(sizes) < 32:
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: expected sizes of at least 32 px")
    return sizes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="weights/base/config.toml",
                   help="config whose [data] the report model was trained on (default: the base "
                        "model's, weights/base/config.toml)")
    p.add_argument("--development", type=Path, default=DEFAULT_DEVELOPMENT,
                   help="folder of real development photographs (DRIVE layout: images/*.tif; "
                        f"default {DEFAULT_DEVELOPMENT})")
    p.add_argument("--sizes", type=_sizes, default=[64, 128, 256],
                   help="analysis sizes in px, comma-separated (default 64,128,256)")
    p.add_argument("--reference", type=int, default=400,
                   help="training images the distance is measured to (default 400)")
    p.add_argument("--held-out", type=int, default=200,
                   help="further training images held out, beside the validation split, to set "
                        "the threshold (default 200)")
    p.add_argument("--margin", type=float, default=1.5,
                   help="threshold = margin x the largest held-out distance (default 1.5)")
    p.add_argument("--shrinkage", type=float, default=0.1,
                   help="covariance shrinkage towards the identity (default 0.1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")


def _development_photographs(folder: Path) -> list[Path]:
    from medq.data.imageio import IMAGE_SUFFIXES

    images = folder / "images" if (folder / "images").is_dir() else folder
    found = sorted(p for p in images.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise SystemExit(f"calibrate-ood: no development photographs in {images} (expected "
                         "DRIVE's images/*.tif; pass --development)")
    return found


def photo_tensor(path: Path):
    """A photograph file -> (3, h, w) float in [0, 1] (``medq.data.imageio.load_rgb``)."""
    import torch

    from medq.data.imageio import load_rgb

    return torch.from_numpy(load_rgb(path)).permute(2, 0, 1).float() / 255.0


def _features(images, size: int) -> np.ndarray:
    from medq.report_ood import analysis_image, image_features

    return np.stack([image_features(*analysis_image(img, size, name=str(name)))
                     for name, img in images])


def calibrate_size(args, data_cfg, size: int, photos: list[tuple[str, object]]) -> dict:
    """One analysis size: the fitted reference with its threshold, and the separation summary."""
    from medq.report_ood import (
        fit_reference,
        synthetic_image,
        synthetic_split,
        threshold_from_held_out,
    )

    train = synthetic_split(data_cfg, "train")
    if len(train) < args.reference + args.held_out:
        raise SystemExit(f"calibrate-ood: the training split has {len(train)} images, fewer than "
                         f"--reference {args.reference} + --held-out {args.held_out}")
    held = train[args.reference:args.reference + args.held_out] + synthetic_split(data_cfg, "val")
    ref = fit_reference(_features(((i, synthetic_image(seed, i, size))
                                   for seed, i in train[:args.reference]), size), size,
                        args.shrinkage)
    held_d = ref.distance(_features(((i, synthetic_image(seed, i, size)) for seed, i in held),
                                    size))
    ref.threshold = threshold_from_held_out(held_d, args.margin)
    dev = {name: float(d) for (name, _), d in zip(photos, ref.distance(_features(photos, size)))}
    return {"reference": ref, "held_out": {"n": len(held), "max": float(held_d.max()),
                                           "q99": float(np.quantile(held_d, 0.99)),
                                           "median": float(np.median(held_d))},
            "development": dev}


def main(args) -> int:
    from medq.config import load_config
    from medq.data.synthetic import GENERATOR_VERSION
    from medq.files import write_text_atomic
    from medq.report_ood import Calibration

    t0 = time.perf_counter()
    data_cfg = load_config(str(args.config)).data
    if data_cfg.source != "synthetic":
        print(f"calibrate-ood: {args.config} trains on data.source = {data_cfg.source!r}; the "
              "report model of this project learns from synthetic images", file=sys.stderr)
        return 2
    photos = [(p.name, photo_tensor(p)) for p in _development_photographs(args.development)]
    rows, failures, references = [], [], {}
    sizes_meta = {}
    for size in args.sizes:
        res = calibrate_size(args, data_cfg, size, photos)
        ref, dev = res["reference"], res["development"]
        references[size] = ref
        low = [f"{n} ({d:.1f})" for n, d in dev.items() if not d > ref.threshold]
        if low:
            failures.append(f"{size} px: development photographs at or below the threshold "
                            f"{ref.threshold:.2f}: {', '.join(low)}")
        vals = np.array(list(dev.values()))
        sizes_meta[str(size)] = {"threshold": ref.threshold, "held_out_synthetic": res["held_out"],
                                 "development": {"n": len(vals), "min": float(vals.min()),
                                                 "median": float(np.median(vals)),
                                                 "max": float(vals.max()),
                                                 "min_over_threshold":
                                                     float(vals.min() / ref.threshold)}}
        rows.append((size, ref.threshold, res["held_out"], vals))
    _print_table(rows, len(photos), args.development)
    if failures:
        for line in failures:
            print(f"calibrate-ood: FAILED {line}; {args.out} not written", file=sys.stderr)
        return 1
    cal = Calibration(references, generator_version=GENERATOR_VERSION, meta={
        "what": "report out-of-distribution check (medq.report_ood): Mahalanobis distance of "
                "image features to the report model's synthetic training images; a photograph "
                "above the threshold gets no report shown as a finding",
        "command": " ".join(["python -m demo calibrate-ood", *sys.argv[2:]]),
        "created": datetime.date.today().isoformat(),
        "data": {"config": str(args.config), "source": "synthetic", "seed": data_cfg.seed,
                 "num_images": data_cfg.num_images, "reference": f"the first {args.reference} "
                 "training-split images", "held_out": f"the next {args.held_out} training-split "
                 "images and the validation split", "development": f"{len(photos)} photographs "
                 f"of {args.development}", "test_split": "not used (checked by "
                 "tests/test_demo_ood.py)"},
        "rule": f"threshold = {args.margin} x the largest held-out synthetic distance",
        "margin": args.margin, "shrinkage": args.shrinkage, "sizes": sizes_meta})
    write_text_atomic(args.out, compact_json(cal.to_dict()))
    print(f"calibrate-ood: wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


def compact_json(obj) -> str:
    """Indented JSON with every list of numbers on one line (a matrix: one line per row)."""
    import re

    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s+([-+0-9.eE,\s]+?)\s+\]",
                  lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def _print_table(rows, n_dev: int, development: Path) -> None:
    print(f"distance to the synthetic training images; development: {n_dev} photographs of "
          f"{development}")
    print(f"{'size':>5} {'threshold':>9} | {'held-out synthetic: n':>21} {'median':>6} "
          f"{'q99':>6} {'max':>6} | {'development: min':>16} {'median':>6} {'max':>6} "
          f"{'min/threshold':>13}")
    for size, thr, held, vals in rows:
        print(f"{size:>5} {thr:9.2f} | {held['n']:>21} {held['median']:6.2f} {held['q99']:6.2f} "
              f"{held['max']:6.2f} | {vals.min():16.2f} {np.median(vals):6.2f} {vals.max():6.2f} "
              f"{vals.min() / thr:13.2f}")
