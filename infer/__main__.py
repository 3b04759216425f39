"""``python -m infer``: reports and SR / enhance outputs of one model over the test split.

    python -m infer --run runs/ssim_v3-1a2b3c4d               # latest checkpoint, EMA weights
    python -m infer --run runs/ssim_v3-1a2b3c4d --weights model --checkpoint step_300
    python -m infer --baseline bicubic                     # bicubic | lanczos | identity | constant
    python -m infer --model my_pkg.wrap:BagelWrapper --model-arg ckpt=/models/bagel \
        --model-arg steps=50
    python -m infer --run runs/X --data eyeq --root /data/EyeQ/original_img \
        --labels /data/Label_EyeQ_test.csv
    python -m infer --baseline bicubic --data drive --root ../shared/fundus-samples/drive
    torchrun --nproc_per_node=2 -m infer --run runs/X                # sharded, merged by rank 0

Writes ``<out>/<task>/images/<id>_{input,output,target,mask}.png``, ``<out>/<task>/records.jsonl``
and ``<out>/summary.json`` (text statistics, image sanity, verdict healthy | collapsed). Default
``<out>``: ``<run>/eval/<checkpoint>-<weights>`` for --run, ``<run.out_dir>/_baselines/<name>/eval``
for --baseline, ``<run.out_dir>/_models/<name>/eval`` for --model, where ``eval`` is for the
embedded test split: other data (``--data``, ``--root``, ``--labels``, ``--split``) goes to
``eval-<source>-<split>-<sha8>`` instead, and ``<out>/data.json`` records the data, so the
outputs of two data sources never mix (an explicit --out holding other data is an error).
Re-running resumes.

Images of any size: each image is cropped to the square around its field of view and resized to
the working size (``--set data.image_size=N``, default 256; 0 = each photograph's own size); for SR
the target is that image and the input its bicubic downscale by 2 or 4; for enhance the input is
the degraded working-size image. The model generates it tile by tile (``model.tile_size``).

Errors (missing checkpoint, another architecture, a config that does not match the weights, an
unreadable image, a class that is not an ImageTextModel) print one message and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from medq.cli import data_overrides
from medq.config import ConfigError, load_config
from medq.dist import barrier, current, init_dist, pick_device, shutdown_group
from medq.harness import run_harness, summarize
from medq.harness.load import load_baseline, load_class, load_run, model_dir_name
from medq.harness.records import (
    DataMismatchError,
    claim_eval_dir,
    data_key,
    keyed_eval_dir,
    read_records,
    write_json_atomic,
)
from medq.harness.text import DEFAULT_SAMPLED_TEMPERATURE, InferError
from medq.tasks import TASKS

log = logging.getLogger("infer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run directory (or a checkpoint directory) of ours")
    src.add_argument(
        "--model", metavar="MODULE:CLASS", help="any ImageTextModel, imported by dotted path"
    )
    src.add_argument("--baseline", choices=["bicubic", "lanczos", "identity", "constant"])
    p.add_argument(
        "--weights",
        choices=["ema", "model"],
        default="ema",
        help="--run: which weights (default ema)",
    )
    p.add_argument(
        "--checkpoint", metavar="step_N", help="--run: this checkpoint instead of the latest"
    )
    p.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="K=V",
        help="--model: constructor keyword argument (TOML literal or string; repeatable)",
    )
    p.add_argument(
        "--preset",
        default="control",
        help="config for --model/--baseline (data, image size); --run uses the run's own",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set data.num_images=24 (model.* is fixed for --run)",
    )
    p.add_argument("--data", choices=["synthetic", "eyeq", "drive", "folder"], help="data.source")
    p.add_argument("--root", help="data.root: image folder for eyeq / drive / folder")
    p.add_argument("--labels", help="data.labels: EyeQ label CSV")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="data split (default test; 'all' for a small folder of images)")
    p.add_argument(
        "--tasks", help="comma-separated subset of sr2,sr4,enhance (default: data.tasks)"
    )
    p.add_argument("--out", type=Path, help="output directory (default: see above)")
    p.add_argument(
        "--seed", type=int, help="base seed (default sample.seed); per sample: (seed, id)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, help="at most this many samples per task")
    p.add_argument("--no-text", action="store_true", help="skip report generation")
    p.add_argument("--no-sampled", action="store_true", help="greedy reports only")
    p.add_argument(
        "--temperature",
        type=float,
        help=f"sampled reports (default sample.temperature, or {DEFAULT_SAMPLED_TEMPERATURE} "
        f"when that is 0 = greedy)",
    )
    p.add_argument("--top-p", type=float, help="sampled reports (default sample.top_p)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default run.device)")
    p.add_argument(
        "--fail-on-collapse", action="store_true", help="exit 1 when the verdict is collapsed"
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _limited(dataset, tasks: set[str], limit: int | None):
    if limit is None:
        return dataset
    counts: dict[str, int] = {}
    kept = []
    for i in range(len(dataset)):
        item = dataset[i]
        if item["task"] in tasks and counts.get(item["task"], 0) < limit:
            counts[item["task"]] = counts.get(item["task"], 0) + 1
            kept.append(item)
    return kept


def run(args) -> int:
    overrides = data_overrides(args.overrides, source=args.data, root=args.root,
                               labels=args.labels)
    if args.run is not None:
        device = pick_device(args.device or "auto")
        # --set sample.* is applied once, by load_run, to the checkpoint's own config.
        model, meta, info = load_run(args.run, weights=args.weights, checkpoint=args.checkpoint,
                                     device=device, overrides=overrides)
        log.info("loaded %s (%s weights, fingerprint %s)", info["checkpoint"], args.weights,
                 info["fingerprint"])
        cfg = info["config"]
        out = args.out or info["run_dir"] / "eval" / f"{meta['checkpoint']}-{args.weights}"
    else:
        cfg = load_config(args.preset, overrides=overrides)
        if args.baseline:
            model = load_baseline(args.baseline)
            out = args.out or Path(cfg.run.out_dir) / "_baselines" / model.name / "eval"
        else:
            model = load_class(args.model, args.model_arg)
            out = (
                args.out or Path(cfg.run.out_dir) / "_models" / model_dir_name(model.name) / "eval"
            )
        meta = {"run": model.name, "checkpoint": None, "weights": None}
    tasks = args.tasks.split(",") if args.tasks else list(cfg.data.tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise InferError(f"--tasks: unknown {', '.join(bad)}; expected {', '.join(TASKS)}")
    from medq.data import build_dataset

    key = data_key(cfg.data, cfg.data.image_size, args.split)
    if args.out is None:
        out = keyed_eval_dir(out, key)
    if int(os.environ.get("RANK", "0")) == 0:
        claim_eval_dir(out, key, replace_stale=args.out is None)
    barrier(current())  # nobody writes before rank 0 has cleared
    dataset = build_dataset(cfg.data, args.split)
    if len(dataset) == 0:
        raise InferError(f"the {args.split} split of data.source = {cfg.data.source!r} is empty "
                         f"(use --split all for a handful of images)")
    items = _limited(dataset, set(tasks), args.limit)
    temperature = args.temperature if args.temperature is not None else (
        cfg.sample.temperature or DEFAULT_SAMPLED_TEMPERATURE)
    sampled = (
        None
        if args.no_sampled
        else {
            "temperature": temperature,
            "top_p": args.top_p if args.top_p is not None else cfg.sample.top_p,
        }
    )
    paths = run_harness(model, items, out, tasks=tasks,
                        seed=cfg.sample.seed if args.seed is None else args.seed,
                        batch_size=args.batch_size, text=not args.no_text, sampled=sampled,
                        progress=not args.no_progress, meta=meta)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    rows = [r for p in paths.values() for r in read_records(p)]
    summary = summarize(rows)
    if args.run is not None:
        report = info["load_report"]
        summary["load"] = {
            "checkpoint": str(info["checkpoint"]),
            "weights": args.weights,
            "fingerprint": info["fingerprint"],
            "report": report.to_dict() if hasattr(report, "to_dict") else str(report),
        }
    write_json_atomic(Path(out) / "summary.json", summary)
    print(format_summary(summary, out))
    collapsed = summary["verdict"]["status"] == "collapsed"
    return 1 if collapsed and args.fail_on_collapse else 0


def _fmt(v, spec=".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def format_summary(s: dict, out) -> str:
    t, ts, im, v = s["text"], s["text_sampled"], s["images"], s["verdict"]
    lines = [f"model {s['model']}  ({s['n']} samples: "
             + ", ".join(f"{k} {n}" for k, n in sorted(s["tasks"].items())) + f")  -> {out}"]
    for label, st in (("greedy", t), ("sampled", ts)):
        lines.append(
            f"  text {label:8s} undecodable rate {_fmt(st and st['undecodable_rate'])}  "
            f"samples with any {_fmt(st and st['frac_samples_with_undecodable'])}"
            + (
                f"  quality accuracy {_fmt(st.get('quality_accuracy'))}"
                if st and label == "greedy"
                else ""
            )
        )
    lines.append(
        f"  images  psnr {_fmt(im['psnr'], '.2f')} dB "
        f"(reference {_fmt(im['psnr_reference'], '.2f')}, "
        f"gap {_fmt(im['psnr_gap_db'], '+.2f')})  std ratio {_fmt(im['output_std_ratio'], '.3f')}  "
        f"non-finite {_fmt(im['nonfinite_frac'])}"
    )
    lines.append(f"  verdict {v['status'].upper()}" + "".join(f"\n    - {r}" for r in v["reasons"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    init_dist(pick_device("auto"))  # under torchrun: NCCL on CUDA, else gloo
    try:
        return run(args)
    except (InferError, ConfigError, FileNotFoundError, DataMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, ImportError) as e:
        # An unreadable / corrupt image or bad data files surface here from the data readers.
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_group()


if __name__ == "__main__":
    sys.exit(main())
