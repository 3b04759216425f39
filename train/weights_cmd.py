"""``python -m train weights``: rebuild the shipped pretrained weights in ``weights/`` from scratch.

    python -m train weights                     # VAE -> base model -> weights/ (hours on a CPU)
    python -m train weights --check             # load weights/ strictly, re-score, compare
    python -m train weights --keep-vae          # keep weights/vae, retrain only the base model
    python -m train weights --vae-steps 300 --base-steps 200 --out /tmp/w   # a quick trial

Why the weights are shipped: the original fine-tuned a fully pretrained BAGEL; a fine-tune of a base
that saw a few hundred steps measures the base's immaturity, not the loss. A base trained for
thousands of steps does not fit the main job's CPU budget, so it is trained once by this command
and committed (``make weights`` runs it; ``make train-v3`` fine-tunes from it).

What it writes (each directory is written under a temporary name and renamed when complete):

    weights/vae/    model.safetensors arch.json metrics.json      (``python -m train vae``)
    weights/base/   ema.safetensors arch.json tokenizer.json config.toml state.json
                    manifest.json: sha256 of every file, the config hash, the command, and the
                    scores ``--check`` reproduces (x0 prediction from pure noise, PSNR in the FOV,
                    on the first images of the val split of each task; the DR-grade kappa of the
                    greedy reports on the val split of sr2 and enhance: the base reads the image)

Only the EMA weights are shipped (what every fine-tune starts from): ``init.weights = "model"``
is refused for ``weights/base`` with that reason.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from medq.checkpoint import MANIFEST, REBUILD, SHIPPED_FILES, is_shipped  # noqa: F401 - re-used
from medq.files import atomic_dir, sha256_file

SCORE_IMAGES = 8
REPORT_TASKS = ("sr4", "sr2", "enhance")
"""Tasks whose reports are scored: at the working size every input shows the lesions."""
REPORT_IMAGES = 62
"""Val images per task of the recorded report kappa (all 62 of the default data's val split; a
kappa over 8 images would swing by 0.2 with one report)."""
KAPPA_TOLERANCE = 0.1
"""Greedy decoding flips on a near-tie when float reduction order differs between machines; one
flipped grade of 62 moves the kappa by less than this."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="weights", help="directory to write vae/ and base/ into "
                   "(default weights; model.vae and init.from of the presets point there)")
    p.add_argument("--vae-steps", type=int, default=3000, help="VAE optimizer steps (default 3000)")
    p.add_argument("--base-steps", type=int, default=None,
                   help="base model steps (default: the pretrain preset's optim.max_steps)")
    p.add_argument("--keep-vae", action="store_true",
                   help="reuse <out>/vae if it is complete and train only the base model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the VAE and the base run, e.g. --set optim.lr=5e-4")
    p.add_argument("--check", action="store_true",
                   help="write nothing: load <out>/base strictly, re-score it and compare with its "
                        "manifest (exit 1 on a difference)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def score_base(ckpt: Path, n: int = SCORE_IMAGES) -> dict[str, float]:
    """Mean PSNR-fov (dB) of the base model's x0 prediction from pure noise (``output="onestep"`` at
    t = 1 with one draw, image i with seed i) on the first ``n`` val images of each task at the
    working size: what ``--check`` reproduces (``medq.harness.split_scores``)."""
    from medq.harness.load import load_run
    from medq.harness.split_scores import split_fov_scores

    model, _, info = load_run(ckpt, output="onestep")
    # The recorded scores are defined from pure noise (t = 1, one draw), whatever sample.onestep_t
    # and sample.onestep_draws say.
    adapter = model.with_sample(onestep_t=1.0, onestep_draws=1)
    scores = split_fov_scores(adapter, info["config"].data, "val", n)
    return {task: round(s["psnr_fov"], 4) for task, s in scores.items()}


def read_grades(ckpt: Path, n: int = REPORT_IMAGES) -> dict[str, float | None]:
    """DR-grade kappa (quadratic-weighted) of the base model's greedy reports of the first ``n``
    val images of each of ``REPORT_TASKS`` (None when undefined, e.g. one grade on both sides)."""
    from medq.harness.load import load_run
    from medq.harness.split_scores import split_report_scores

    model, _, info = load_run(ckpt)
    cfg = info["config"]
    tasks = [t for t in REPORT_TASKS if t in cfg.data.tasks]
    scores = split_report_scores(model.with_sample(temperature=0.0), cfg.data, "val", n,
                                 tasks=tasks)
    return {task: None if s["dr_kappa"] is None else round(s["dr_kappa"], 4)
            for task, s in scores.items()}


def _kappa_differs(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is not want
    return abs(got - want) > KAPPA_TOLERANCE


def check(base: Path) -> int:
    """Verify ``base`` against its manifest: files present with their sha256, strict load, scores
    within 0.05 dB (float reduction order differs between machines)."""
    from medq.models import CheckpointMismatchError

    manifest_path = base / MANIFEST
    if not manifest_path.is_file():
        print(f"error: {manifest_path} is missing; rebuild the shipped weights with {REBUILD}",
              file=sys.stderr)
        return 1
    try:
        manifest = json.loads(manifest_path.read_text())
        digests = dict(manifest["sha256"])
        dict(manifest["scores"])  # readable too, or the manifest is corrupt
        dict(manifest["report_kappa"])
    except (ValueError, KeyError, TypeError) as e:
        print(f"error: {manifest_path} is not a readable manifest ({type(e).__name__}: {e}); "
              f"restore it from git or rebuild with {REBUILD}", file=sys.stderr)
        return 1
    for name, digest in digests.items():
        if not (base / name).is_file() or sha256_file(base / name) != digest:
            print(f"error: {base / name} is missing or differs from {manifest_path} (sha256); "
                  f"restore it from git or rebuild with {REBUILD}", file=sys.stderr)
            return 1
    try:
        scores = score_base(base, manifest["score_images"])
        kappa = read_grades(base, manifest["report_images"])
    except (CheckpointMismatchError, FileNotFoundError, ValueError) as e:
        print(f"error: {base}: {e}; rebuild with {REBUILD}", file=sys.stderr)
        return 1
    bad = {t: (s, manifest["scores"].get(t)) for t, s in scores.items()
           if manifest["scores"].get(t) is None or abs(s - manifest["scores"][t]) > 0.05}
    for task, (got, want) in bad.items():
        print(f"error: {base}: {task} scores {got} dB, manifest says {want} dB", file=sys.stderr)
    want_kappa = manifest["report_kappa"]
    bad_kappa = {t: (k, want_kappa.get(t, "missing")) for t, k in kappa.items()
                 if t not in want_kappa or _kappa_differs(k, want_kappa[t])}
    for task, (got, want) in bad_kappa.items():
        print(f"error: {base}: {task} report DR kappa {got}, manifest says {want}",
              file=sys.stderr)
    if not bad and not bad_kappa:
        print(f"{base}: sha256 ok, strict load ok, scores {scores} = manifest, report DR kappa "
              f"{kappa} = manifest")
    return 1 if bad or bad_kappa else 0


def main(args) -> int:
    out = Path(args.out)
    if args.check:
        return check(out / "base")
    for flag, value in (("--vae-steps", args.vae_steps), ("--base-steps", args.base_steps)):
        if value is not None and value < 1:
            raise SystemExit(f"{flag} = {value}: must be >= 1")
    from medq.checkpoint import latest_checkpoint
    from medq.config import load_config
    from train import vae_cmd
    from train.__main__ import main as train_main

    start = time.perf_counter()
    vae_dir = out / "vae"
    overrides = list(args.overrides) + [f"model.vae={json.dumps(str(vae_dir))}"]
    keep = args.keep_vae and (vae_dir / "metrics.json").is_file()
    vae_args = ([] if keep else ["--force"]) + ["--preset", "pretrain", "--steps",
                                                 str(args.vae_steps)] \
        + sum((["--set", o] for o in overrides), [])
    if args.no_progress:
        vae_args.append("--no-progress")
    if vae_cmd.main(_namespace(vae_cmd.add_arguments, vae_args)):
        return 1
    # The build directory is kept between attempts: an interrupted build (hours on a CPU) resumes
    # from its last complete checkpoint when the same command runs again; a changed config hashes
    # to another run directory inside it. export() removes it once the weights are shipped.
    build_dir = out / ".build"
    overrides.append(f"run.out_dir={json.dumps(str(build_dir))}")
    if args.base_steps is not None:
        overrides.append(f"optim.max_steps={args.base_steps}")
    argv = ["--preset", "pretrain"] + sum((["--set", o] for o in overrides), [])
    if args.no_progress:
        argv.append("--no-progress")
    if train_main(argv):
        return 1
    cfg = load_config("pretrain", overrides=overrides)
    return export(latest_checkpoint(cfg.run_dir / "checkpoints"), out, cfg, start)


def export(ckpt: Path, out: Path, cfg, start: float) -> int:
    """Copy the shipped files of ``ckpt`` (a finished pretrain run's checkpoint) into
    ``<out>/base`` with their manifest, atomically; remove the build directory."""
    if ckpt is None:
        raise SystemExit(f"error: no complete checkpoint in {cfg.run_dir / 'checkpoints'}")
    vae_dir, build_dir = Path(cfg.model.vae), Path(cfg.run.out_dir)
    with atomic_dir(out / "base") as tmp:
        manifest = _write_shipped(ckpt, tmp, cfg, vae_dir, start)
    shutil.rmtree(build_dir, ignore_errors=True)
    print(f"shipped weights in {out}: VAE val PSNR {manifest['vae']['psnr_val']:.2f} dB, base step "
          f"{manifest['step']}, scores {manifest['scores']}, report DR kappa "
          f"{manifest['report_kappa']}, {manifest['build_seconds']:.0f} s")
    return 0


def _write_shipped(ckpt: Path, tmp: Path, cfg, vae_dir: Path, start: float) -> dict:
    """The shipped files of ``ckpt`` and their manifest into ``tmp``; returns the manifest."""
    for name in SHIPPED_FILES:
        shutil.copy2(ckpt / name, tmp / name)
    scores = score_base(ckpt, SCORE_IMAGES)  # the same files (a .tmp- directory is never loaded)
    kappa = read_grades(ckpt, REPORT_IMAGES)
    manifest = {
        "what": "mini-BAGEL base model (pretrain preset), EMA weights, and its VAE",
        "rebuild": REBUILD, "command": " ".join(["python -m train weights"] + sys.argv[2:]),
        "config_hash": cfg.hash, "run_name": cfg.run_name,
        "step": json.loads((ckpt / "state.json").read_text())["step"],
        "vae": json.loads((vae_dir / "metrics.json").read_text()),
        "score": "mean PSNR-fov (dB) of the x0 prediction from pure noise, first "
                 f"{SCORE_IMAGES} val images per task (train.weights_cmd.score_base)",
        "score_images": SCORE_IMAGES, "scores": scores,
        "report_kappa_what": "quadratic-weighted kappa of the DR grade in the greedy reports "
                             f"against the truth, first {REPORT_IMAGES} val images "
                             "(train.weights_cmd.read_grades)",
        "report_images": REPORT_IMAGES, "report_kappa": kappa,
        "sha256": {name: sha256_file(tmp / name) for name in SHIPPED_FILES},
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _namespace(add_arguments, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)
