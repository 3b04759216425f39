"""``python -m train``: train or fine-tune the mini-BAGEL from a preset; also ``data``, ``vae``,
``probe`` and ``weights``.

    python -m train data                                  # make data: generate / cache the images
    python -m train weights --check                       # make check-weights: verify weights/
    python -m train weights                               # make weights: rebuild weights/
    python -m train vae --set model.vae=runs/vae          # train a VAE of your own
    python -m train probe --preset pixel                  # gradient pull of each loss term
    python -m train --preset pretrain                     # a base model of your own, from scratch
    python -m train --preset ssim_v3                      # make train-v3: from weights/base
    python -m train --preset ssim_v3 --dry-run            # print the resolved config, write nothing
    python -m train --preset pixel --set optim.max_steps=50 --set run.device=cpu
    python -m train --preset pretrain --with model/small  # overlay configs/model/small.toml
    python -m train --preset ssim_v3 --sweep loss.ssim_weight=0.1,0.2 \
        --sweep loss.ssim_max_t=0.1,0.15
    python -m train --resume runs/ssim_v3-1a2b3c4d        # continue that run from its config.toml
    torchrun --nproc_per_node=2 -m train --preset pixel   # DDP (gloo on CPU, NCCL on CUDA)
    torchrun --nproc_per_node=2 -m train --preset pixel --set run.fsdp=true   # FSDP2 shards

Every run lives in ``<run.out_dir>/<preset>-<hash8>/`` (``docs/ARCHITECTURE.md``). Running the same
command again resumes an unfinished run from its latest complete checkpoint, and says so and exits
0 when the run is finished. ``optim.batch_size`` is the global batch, split over the ranks.
``--preset NAME`` is a file of configs/; a TOML file elsewhere is read when given as its path
(ending in .toml), and the run says so.

Exit codes: 0 trained (finished, collapsed and stopped by run.collapse_stop, or stopped at
--stop-at), or nothing to do; 2 refused or stopped with one line on stderr naming the file, key or
disk: a bad argument or config value, the run directory in use by another process, no usable
checkpoint, weights that do not match, a failed write (full disk, quota, permissions: the line
names the disk; the same command then resumes from the last complete checkpoint); 3 aborted after
run.max_nonfinite non-finite steps in a row (run.json "aborted", ``latest`` names the last good
checkpoint); 1 anything else, with a traceback (a bug: please report it). A run stopped by an
error (2 or 1) is marked "failed" in run.json, or removed when this command created it and it
holds no checkpoint and no logged step.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import logging
import os
import sys
from pathlib import Path

from medq.cli import run_subcommand
from medq.config import ConfigError, available_presets, dump_toml, load_config

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM,
                errno.EROFS}
REFUSED, ABORTED = 2, 3
SUBCOMMANDS = {"data": ("train.data_cmd", "generate / cache the images"),
               "vae": ("train.vae_cmd", "train a VAE of your own"),
               "probe": ("train.probe_cmd", "gradient pull of each loss term"),
               "weights": ("train.weights_cmd", "rebuild or --check the shipped weights/")}
log = logging.getLogger("train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommands: `python -m train data --help`, `python -m train vae --help`, "
        "`python -m train probe --help`, `python -m train weights --help`. "
        f"presets: {', '.join(available_presets())}",
    )
    p.add_argument("--preset", default=None,
                   help="NAME of configs/NAME.toml, or the path of a TOML file elsewhere (e.g. a "
                        "run's saved config.toml; ending in .toml) (default: control)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="typed override, e.g. --set loss.ssim_weight=0.2 (repeatable)")
    p.add_argument("--with", dest="overlays", action="append", default=[], metavar="OVERLAY",
                   help="overlay file under configs/, e.g. model/small (repeatable)")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="run the grid of all values, one run (and run dir) each, in sequence")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config(s) and run directories; write nothing")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="RUN_DIR",
        help="require a checkpoint to resume from (error if there is none); with RUN_DIR, "
        "continue that run from its saved config.toml",
    )
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="leave after STEP with a checkpoint (the run stays unfinished; re-run to "
                        "continue), e.g. for time-limited jobs")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def split_values(text: str) -> list[str]:
    """'0.1,0.2' -> ['0.1', '0.2']; commas inside [...] belong to a list value."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def sweep_overrides(sweeps: list[str]) -> list[list[str]]:
    """['a.b=1,2', 'c.d=3,4'] -> [['a.b=1','c.d=3'], ['a.b=1','c.d=4'], ...] (the grid)."""
    axes = []
    for s in sweeps:
        if "=" not in s:
            raise ConfigError(f"--sweep {s!r}: expected section.key=v1,v2")
        key, values = s.split("=", 1)
        parts = [v.strip() for v in split_values(values)]
        if not values.strip():
            raise ConfigError(f"--sweep {s!r}: no values after '='; expected {key}=v1,v2")
        if "" in parts:
            raise ConfigError(f"--sweep {s!r}: empty value at position {parts.index('') + 1}; "
                              f"expected {key}=v1,v2 with no empty entries")
        axes.append([f"{key}={v}" for v in parts])
    return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def banner(text: str) -> str:
    lines = text.splitlines()
    width = max(len(line) for line in lines)
    return "\n".join(
        ["#" * (width + 4)] + [f"# {line.ljust(width)} #" for line in lines] + ["#" * (width + 4)]
    )


def start_warnings(cfg) -> list[str]:
    """Loud warnings about configurations that reproduce a known accident on purpose."""
    out = []
    if cfg.init.scratch and cfg.loss.needs_vae:
        out.append(banner(
            f"WARNING: preset {cfg.run.preset!r} trains an image-space loss "
            f"(ssim_weight={cfg.loss.ssim_weight}, pixel_weight={cfg.loss.pixel_weight})\n"
            "from RANDOM weights (init.scratch = true): no pretrained weights are loaded.\n"
            "This is the SSIM v2 accident (finetune_from_ema False): expect undecodable\n"
            "tokens and garbage images. Reproduced on purpose; set init.from to fine-tune."))
    return out


def orphan_notes(cfg, most: int = 6) -> list[str]:
    """For a new run directory: the newest run of the same preset under another hash and the keys
    that differ, so a config change (or a new field, which changes every hash) never silently
    leaves the old run behind."""
    from medq.config import config_changes, older_runs

    older = older_runs(cfg)
    if not older:
        return []
    changes = config_changes(older[0] / "config.toml", cfg)
    lines = [f"note: {cfg.run_dir} is a new run; {older[0]} has the same preset under another "
             f"config hash and is not resumed ({len(changes)} difference(s)):"]
    lines += [f"  {c}" for c in changes[:most]]
    if len(changes) > most:
        lines.append(f"  ... and {len(changes) - most} more")
    return lines


def run_one(cfg, args) -> int:
    """One run: its directory is locked (``medq.run_lock``) from before the first write to the
    end; a run that stops with an error is never left "running" (``_after_failure``)."""
    from medq.dist import DeviceError, pick_device
    from medq.run_lock import RunLockedError, acquire_run_lock, release_run_lock

    try:
        device = pick_device(cfg.run.device)
    except DeviceError as e:
        raise SystemExit(f"error: {e}") from None
    if args.dry_run:
        return _run_one(cfg, args, device)
    created = not cfg.run_dir.exists()
    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 holds the lock for every rank
        return _run_one(cfg, args, device)
    try:
        acquire_run_lock(cfg.run_dir)
    except RunLockedError as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:
        raise SystemExit(f"error: run.out_dir = {cfg.run.out_dir!r}: cannot create or lock "
                         f"{cfg.run_dir} ({e.strerror or e}); choose a writable run.out_dir"
                         ) from None
    failed = True
    try:
        rc = _run_one(cfg, args, device)
        failed = rc not in (0, ABORTED)
        return rc
    except KeyboardInterrupt:
        failed = False  # stopped by the user: left as it is (its lock is free, it resumes)
        raise
    finally:
        release_run_lock(cfg.run_dir)
        if failed:
            _after_failure(cfg, created)


def _after_failure(cfg, created: bool) -> None:
    """A run that stopped with an error: removed when this process created its directory and it
    holds no checkpoint and no logged step (a failed start leaves nothing for ``bench eval`` to
    report as "no checkpoint"), else marked "failed" in run.json if it says "running" (the same
    command resumes it). A write that fails here too (a full disk) leaves run.json as it was."""
    import shutil

    from medq.checkpoint import latest_checkpoint, read_run_json, write_run_json
    from train.logger import read_metrics

    if not cfg.run_dir.is_dir():
        return
    metrics = cfg.run_dir / "logs" / "metrics.csv"
    try:
        logged = metrics.is_file() and any(read_metrics(metrics).values())
    except (OSError, ValueError):
        logged = True  # unreadable history is still history: keep it
    if created and not logged and latest_checkpoint(cfg.run_dir / "checkpoints") is None:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        return
    info = read_run_json(cfg.run_dir) or {}
    if info.get("status") == "running":
        try:
            write_run_json(cfg.run_dir, preset=cfg.run.preset, hash_=cfg.hash, status="failed",
                           step=int(info.get("step", 0)))
        except OSError:
            pass


def _run_one(cfg, args, device) -> int:
    from medq.checkpoint import latest_checkpoint, read_run_json
    from medq.dist import init_dist

    dist = init_dist(device)
    main_rank = dist.is_main
    if not main_rank:
        logging.getLogger().setLevel(logging.WARNING)  # one rank tells the story
    if main_rank:
        print(dump_toml(cfg), flush=True)
        print(f"run directory: {cfg.run_dir}", flush=True)
        for w in start_warnings(cfg):
            print(w, file=sys.stderr, flush=True)
            log.warning("init.scratch with an image-space loss (the v2 accident), on purpose")
        if not (cfg.run_dir / "run.json").is_file():
            for line in orphan_notes(cfg):
                print(line, file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    info = read_run_json(cfg.run_dir)
    if info and info.get("status") in ("finished", "collapsed"):
        from medq.training.task import init_changed

        stale = init_changed(cfg.run_dir)
        if stale:
            raise SystemExit(f"run {cfg.run_name} is {info['status']} at step {info['step']}, but "
                             f"{stale}: its results describe the old weights. Move "
                             f"{cfg.run_dir} away (or delete it) to train from the current ones")
        if main_rank:
            print(f"run {cfg.run_name} is already {info['status']} at step {info['step']} "
                  f"({cfg.run_dir}); nothing to do (delete the directory to train it again)")
        return 0
    if args.resume is not None and latest_checkpoint(cfg.run_dir / "checkpoints") is None:
        raise SystemExit(f"--resume: {cfg.run_dir / 'checkpoints'} has no complete checkpoint "
                         f"to resume from (run without --resume to start the run)")
    saved = cfg.run_dir / "config.toml"
    first = saved.read_bytes().decode("utf-8", "replace").split("\n")[0] if saved.exists() else ""
    if saved.exists() and f"sha256 {cfg.hash}" not in first:
        raise SystemExit(f"{saved} holds a different config than the one resolved now (hash prefix "
                         f"collision or an edited file); move that run directory away")
    if main_rank:
        try:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            saved.write_text(dump_toml(cfg))
        except OSError as e:
            raise SystemExit(_write_error(cfg, e)) from None
    return _train(cfg, args, device, dist)


def _check_init_files(cfg) -> None:
    """A truncated or otherwise broken init.from checkpoint is one line naming the file, before
    the model loader would raise from inside safetensors or json."""
    from medq.checkpoint import CheckpointError, resolve_init, verify_checkpoint

    if cfg.init.scratch or not cfg.init.from_:
        return
    try:
        ckpt = resolve_init(cfg.init.from_, Path(cfg.run.out_dir))
    except FileNotFoundError:
        return  # MiniBagelTask says what was looked for
    try:
        verify_checkpoint(ckpt, (f"{cfg.init.weights}.safetensors", "arch.json"))
    except CheckpointError as e:
        raise SystemExit(f"error: init.from = {cfg.init.from_!r}: {e}; point init.from at an "
                         f"intact checkpoint (e.g. an earlier step_* of that run)") from None


def _write_error(cfg, e: OSError) -> str:
    """One line for a run directory that cannot be written (full disk, quota, permissions),
    naming the file and the disk."""
    from medq.checkpoint import CheckpointWriteError
    from medq.files import disk_note

    what = str(e) if isinstance(e, CheckpointWriteError) else \
        f"cannot write {e.filename or cfg.run_dir}: {e.strerror or e}; " \
        f"{disk_note(e.filename or cfg.run_dir)}"
    return (f"error: {what}; free space or fix the permissions of run.out_dir = "
            f"{cfg.run.out_dir!r}, then run the same command again (it resumes from the last "
            f"complete checkpoint)")


def _train(cfg, args, device, dist) -> int:
    """Train, turning a failed write anywhere (the task's init.json, a checkpoint, the logs) into
    one line naming the disk and exit 2."""
    try:
        return _fit(cfg, args, device, dist)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        print(_write_error(cfg, e), file=sys.stderr)
        return REFUSED


def _fit(cfg, args, device, dist) -> int:
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from medq.checkpoint import CheckpointError, write_run_json
    from medq.models import CheckpointMismatchError
    from medq.run_lock import RunLockedError
    from medq.training.task import MiniBagelTask
    from train.loop import train
    from train.monitors import NonFiniteError

    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    _check_init_files(cfg)
    try:
        task = MiniBagelTask(cfg, device, dist)
    except (FileNotFoundError, CheckpointMismatchError) as e:
        # Where the weights come from is wrong: say what, without a traceback.
        raise SystemExit(f"error: {type(e).__name__}: {e}") from None
    try:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            result = train(
                cfg, task, dist=dist, stop_at=args.stop_at, progress=not args.no_progress
            )
    except NonFiniteError as e:
        if dist.is_main:
            write_run_json(
                cfg.run_dir, preset=cfg.run.preset, hash_=cfg.hash, status="aborted", step=e.step
            )
        print(f"error: {e}", file=sys.stderr)
        return ABORTED
    except (CheckpointError, RunLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return REFUSED
    if dist.is_main:
        last = {
            k: round(v, 5) for k, v in result["last"].items() if k.startswith(("loss/", "val/"))
        }
        print(f"run {cfg.run_name}: {result['status']} at step {result['step']}, checkpoint "
              f"{result['checkpoint']}, skipped steps {result['skipped']}")
        print(json.dumps(last, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Every subcommand; a refusal raised as ``SystemExit("message")`` is printed as its one line
    and exits 2 (Python would exit 1, the code of a traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run_subcommand("python -m train", __doc__, SUBCOMMANDS, argv, default=train_main)
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        print(e.code, file=sys.stderr)
        return REFUSED


def train_main(argv: list[str]) -> int:
    """``python -m train [--preset NAME] ...``: train one run, or a sweep of them."""
    args = build_parser().parse_args(argv)
    if args.stop_at is not None and args.stop_at < 1:
        raise SystemExit(f"--stop-at {args.stop_at}: expected a step >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    preset = args.preset
    if args.resume:
        preset = str(Path(args.resume) / "config.toml")
        if not Path(preset).is_file():
            raise SystemExit(f"--resume {args.resume}: no config.toml in that run directory")
    try:
        configs = [
            load_config(
                preset or "control", overrides=args.overrides + grid, overlays=args.overlays
            )
            for grid in sweep_overrides(args.sweep)
        ]
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    if preset and not args.resume and Path(preset).suffix == ".toml" and Path(preset).is_file():
        print(f"note: --preset {preset} is read as a file path, not from configs/ (a name there "
              f"is given without .toml)", file=sys.stderr)
    if args.resume and (args.overrides or args.overlays or args.sweep):
        print("note: --set/--with/--sweep change the config, hence the run directory; the saved "
              "run is resumed only if they resolve to the same hash", file=sys.stderr)
    from medq.dist import shutdown_group

    rc, completed = 0, False
    try:
        for i, cfg in enumerate(configs):
            if len(configs) > 1:
                print(f"== sweep {i + 1}/{len(configs)}: {cfg.run_name}", flush=True)
            rc = run_one(cfg, args) or rc
        completed = True
    finally:
        shutdown_group(wait=completed)
    return rc


if __name__ == "__main__":
    sys.exit(main())
