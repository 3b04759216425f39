"""One table of a sampler setting swept over values, shared by ``bench onestep-t`` and
``bench sample-temperature``: the first ``--images`` images of a split per task, scored inside the
field of view (mean PSNR and SSIM over the eroded FOV: the pixels whose SSIM window lies inside
the disc, where the rim band's blur cannot flatter anything), beside the reference (bicubic for
sr2/sr4, the unchanged input for enhance)."""

from __future__ import annotations

from tqdm import tqdm

from medq.config import ConfigError, with_overrides
from medq.harness.load import InferError, load_run
from medq.harness.split_scores import split_fov_scores


def add_common_arguments(p) -> None:
    p.add_argument("--run", default="weights/base",
                   help="run directory or checkpoint (default: the shipped base model)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--images", type=int, default=62, help="at most N images per task")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="data.* override of the images scored, e.g. --set data.source=drive "
                        "--set data.root=DIR --set data.split_file=F --set data.image_size=512 "
                        "(choose a setting on a real source's val split)")


def parse_list(text: str, flag: str, convert, kind: str, ok, bounds: str) -> list:
    """Comma-separated values of ``flag``; SystemExit naming the bad value otherwise."""
    out = []
    for part in text.split(","):
        try:
            value = convert(part)
        except ValueError:
            raise SystemExit(f"{flag} {text!r}: {part!r} is not {kind}") from None
        if not ok(value):
            raise SystemExit(f"{flag} {text!r}: {part!r} must be in {bounds}")
        out.append(value)
    return out


def load(args, output: str):
    """(model, load info) of ``--run`` with ``output``; SystemExit with the reason otherwise."""
    if args.images < 1:
        raise SystemExit(f"--images {args.images}: must be >= 1")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise SystemExit(f"--set {bad[0]!r}: expected data.KEY=VALUE, e.g. data.image_size=512")
    bad = [o for o in args.overrides if not o.strip().startswith("data.")]
    if bad:
        raise SystemExit(f"--set {bad[0]!r}: only data.* settings (which images are scored) can be "
                         f"changed here; the model's own settings are the columns")
    try:
        model, _, info = load_run(args.run, output=output)
        if args.overrides:
            info = {**info, "config": with_overrides(info["config"], args.overrides)}
    except (InferError, ConfigError) as e:
        raise SystemExit(f"error: {e}") from None
    return model, info


def cell(psnr: float, ssim_fov: float) -> str:
    return f"{psnr:.2f} / {ssim_fov:.3f}"


def print_sweep(model, cfg, args, columns: list[tuple[str, object]]) -> None:
    """Print the Markdown table: one row per task, one column per (header, ``SampleConfig``)."""
    print("| task | reference | " + " | ".join(h for h, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for task in cfg.data.tasks:
        cells = []
        for _, sample_cfg in tqdm(columns, desc=task, disable=args.no_progress):
            try:  # a copy with this column's settings: the loaded model is never changed
                s = split_fov_scores(model.with_sample(sample_cfg), cfg.data, args.split,
                                     args.images, tasks=[task])[task]
            except ValueError as e:
                raise SystemExit(f"error: {e}") from None
            cells.append(cell(s["psnr_fov_eroded"], s["ssim_fov"]))
        ref = cell(s["ref_psnr_fov_eroded"], s["ref_ssim_fov"])
        print(f"| {task} | {ref} | " + " | ".join(cells) + " |", flush=True)
