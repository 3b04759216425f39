"""``bench eval``, step 2: what is evaluated, as a list of ``Target``s.

Every run's latest checkpoint (``--all-checkpoints``: every one), each as its two outputs
(``OUTPUTS``); the checkpoints the runs were fine-tuned from that are not runs themselves (the
shipped base model, preset ``pretrain``); every ``--model``; the baselines, each only on the tasks
where it is the honest reference. A ``Target`` says how to load the model, where its outputs go
(the default directory, keyed by the data later: ``medq.harness.records.keyed_eval_dir``) and how
its rows are labelled; one that cannot be evaluated at all (no checkpoint, an aborted run, an
unreadable config) carries the status its rows get instead. ``bench/eval.py`` evaluates each the
same way.

Output directories (``eval`` is renamed for any data but the embedded test split)::

    <run>/eval/<checkpoint>-<weights>[-onestep]                a run's checkpoint
    <runs-dir>/_init/<sha8>/eval/<checkpoint>-ema[-onestep]    a checkpoint the runs started from
    <runs-dir>/_models/<name>/eval                          a --model
    <runs-dir>/_baselines/<name>/eval                       a baseline
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from medq.scoring import FLOOR
from medq.tasks import TASKS

OUTPUTS = ("sample", "onestep")
"""What each mini-BAGEL checkpoint is scored on (``MiniBagelAdapter``): the Euler sample and the
one-step output (x0 prediction from the condition noised to ``sample.onestep_t``, averaged over
``sample.onestep_draws`` noise draws), the two ends of the perception-distortion trade-off. The
one-step rows are a mode of their own (``<preset>/onestep``) so that comparisons keep them apart."""
BASELINE_NAMES = ("bicubic", "lanczos", "identity", "constant")
# Each baseline only where it is the honest reference: upsampling for SR, the unchanged input for
# enhancement (where bicubic/Lanczos of a same-size input would be identity again, three equal
# rows). The constant image (mean of the training targets) is the floor on every task.
BASELINE_TASKS = {"bicubic": ("sr2", "sr4"), "lanczos": ("sr2", "sr4"), "identity": ("enhance",),
                  "constant": TASKS}
ABORTED_SKIPPED = ("aborted: not scored (stopped by the non-finite guard; --include-aborted "
                   "scores its last good checkpoint)")
ABORTED_MARK = " (aborted run, scored on request)"


@dataclass
class Target:
    """One model to evaluate. ``load()`` returns it; ``out_dir(model)`` is its default output
    directory; ``status`` set: nothing to load, every task gets this status row."""

    meta: dict
    tasks: list[str]
    cfg: object = None                    # medq.config.Config: the data, image size, sample seed
    load: Callable[[], object] | None = None
    out_dir: Callable[[object], Path] | None = None
    text: bool | None = None              # None: reports unless --no-text
    named_by_model: bool = False          # name and run from the loaded model (a --model)
    mark: str = ""                        # appended to every row's status
    status: str | None = None


def run_overrides(overrides: list[str]) -> list[str]:
    """The overrides that apply to a run's checkpoint: all but ``model.*``, which shape only the
    runs ``bench eval`` trains (a run's architecture is its checkpoint's)."""
    return [o for o in overrides if not o.split("=", 1)[0].strip().startswith("model.")]


def status_rows(meta: dict, tasks, status: str) -> list[dict]:
    return [{**meta, "task": t, "status": status} for t in tasks]


def _load_config(path: Path, overrides: list[str]):
    from medq.config import load_config

    return load_config(str(path), overrides=overrides)


def output_targets(source: Path, checkpoint: str | None, meta: dict, cfg, out_dir: Path, ctx,
                   mark: str = "") -> list[Target]:
    """One target per ``OUTPUTS`` of the checkpoint ``source`` (a run with ``checkpoint``, or a
    checkpoint directory): the one-step output's rows are ``<name>/onestep``, its outputs in
    ``<out_dir>-onestep``, without reports (they are the sample's: same model, same input)."""
    from medq.harness.load import load_run

    targets = []
    for output in OUTPUTS:
        suffix = "" if output == "sample" else f"/{output}"

        def load(output=output):
            # --set sample.* (and the data flags) reach the sampler here, once, applied by
            # load_run to the checkpoint's own config; nothing writes them back later.
            return load_run(source, weights=meta["weights"], checkpoint=checkpoint,
                            output=output, device=ctx.device,
                            overrides=run_overrides(ctx.overrides))[0]

        where = Path(f"{out_dir}{suffix.replace('/', '-')}")
        targets.append(Target(
            meta={**meta, "name": meta["name"] + suffix, "preset": meta["preset"] + suffix},
            tasks=ctx.tasks, cfg=cfg, load=load, out_dir=lambda _m, where=where: where,
            text=None if output == "sample" else False, mark=mark))
    return targets


def run_targets(run: Path, ctx) -> list[Target]:
    """Targets of one run directory: every (or the latest) checkpoint, or a status target."""
    from medq.checkpoint import latest_checkpoint, list_checkpoints, read_run_json

    info = read_run_json(run) or {}
    args = ctx.args
    meta = {"name": run.name, "kind": "run", "run": run.name, "preset": info.get("preset", ""),
            "config_hash": str(info.get("hash", ""))[:8], "checkpoint": None, "step": None,
            "weights": args.weights}
    root = run / "checkpoints"
    ckpts = (list_checkpoints(root) if args.all_checkpoints
             else [c for c in [latest_checkpoint(root)] if c])
    aborted = info.get("status") == "aborted"
    if aborted:
        ckpts = _aborted_checkpoints(run, root, ckpts, args)
        if not ckpts:
            return [Target(meta, ctx.tasks, status=ABORTED_SKIPPED if not getattr(
                args, "include_aborted", False) else "aborted: no good checkpoint")]
    if not ckpts:
        print(f"[eval] {run.name}: no complete checkpoint in {root}", flush=True)
        return [Target(meta, ctx.tasks, status="no checkpoint")]
    targets = []
    for ckpt in ckpts:
        m = {**meta, "checkpoint": ckpt.name, "step": int(ckpt.name.split("_")[1]),
             "name": f"{run.name}@{ckpt.name}/{args.weights}"}
        try:
            cfg = _load_config(ckpt / "config.toml", run_overrides(ctx.overrides))
        except Exception as e:  # noqa: BLE001 - one failing run must not lose the other rows
            targets.append(Target(m, ctx.tasks, status=f"error: {type(e).__name__}: {e}"))
            continue
        m["seed"] = cfg.run.seed
        targets += output_targets(run, ckpt.name, m, cfg, run / "eval" / f"{ckpt.name}-"
                                  f"{args.weights}", ctx, ABORTED_MARK if aborted else "")
    return targets


def _aborted_checkpoints(run: Path, root: Path, ckpts: list[Path], args) -> list[Path]:
    """Of an aborted run, only on request (--include-aborted) and only good checkpoints (saved
    after a finite step): the last good one, or every good one with --all-checkpoints."""
    from medq.checkpoint import is_good, last_good_checkpoint

    if not getattr(args, "include_aborted", False):
        print(f"[eval] {run.name}: aborted by the non-finite guard; not scored "
              f"(--include-aborted to score its last good checkpoint)", flush=True)
        return []
    if args.all_checkpoints:
        return [c for c in ckpts if is_good(c)]
    good = last_good_checkpoint(root)
    return [good] if good is not None else []


def init_sources(runs: list[Path], runs_dir: Path) -> list[Path]:
    """The checkpoints the runs were fine-tuned from (their ``init.json``) that are not runs of
    ``runs_dir`` themselves, e.g. the shipped base model ``weights/base``, each once."""
    sources: dict[str, Path] = {}
    for run in runs:
        init = run / "init.json"
        ckpt = json.loads(init.read_text()).get("checkpoint") if init.is_file() else None
        if ckpt and (Path(ckpt) / "state.json").is_file() \
                and Path(runs_dir).resolve() not in Path(ckpt).resolve().parents:
            sources.setdefault(str(Path(ckpt).resolve()), Path(ckpt))
    return list(sources.values())


def init_dir(runs_dir: Path, base: Path) -> Path:
    """``<runs-dir>/_init/<sha8 of the checkpoint's absolute path>``: the outputs of a checkpoint
    the runs started from."""
    return Path(runs_dir) / "_init" / hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:8]


def init_targets(runs: list[Path], ctx, like=None) -> list[Target]:
    """Targets of the checkpoints the evaluated runs started from (``init_sources``): a fine-tune
    that does not beat its starting point learned nothing from its loss. ``like``: the config of
    an evaluated run, whose test set (``data.num_test_images``, ``data.test_seed``) the starting
    point is scored on: a base trained when the test set had another size must be compared on the
    same images, not on the test set its own config recorded."""
    from medq.checkpoint import read_state

    targets = []
    for base in init_sources(runs, ctx.args.runs_dir):
        step = int(read_state(base)["step"])
        checkpoint = f"step_{step:06d}"
        meta = {"name": f"{base}@{checkpoint}/ema", "kind": "run", "run": str(base),
                "preset": "pretrain", "config_hash": "", "checkpoint": checkpoint,
                "step": step, "weights": "ema"}
        try:
            cfg = _load_config(base / "config.toml", run_overrides(ctx.overrides))
            if like is not None:
                cfg = replace(cfg, data=replace(cfg.data, num_test_images=like.data.num_test_images,
                                                test_seed=like.data.test_seed))
        except Exception as e:  # noqa: BLE001 - one failing source must not lose the other rows
            targets.append(Target(meta, ctx.tasks, status=f"error: {type(e).__name__}: {e}"))
            continue
        home = init_dir(ctx.args.runs_dir, base)
        targets += output_targets(base, None, meta, cfg, home / "eval" / f"{checkpoint}-ema", ctx)
    return targets


def model_targets(cfg, ctx) -> list[Target]:
    """Every ``--model MODULE:CLASS``, named and placed by the name the loaded model gives."""
    from medq.harness.load import load_class, model_dir_name

    out = []
    for spec in ctx.args.models:
        meta = {"name": spec, "kind": "model", "run": spec, "preset": "", "config_hash": "",
                "checkpoint": None, "step": None, "weights": None}
        out.append(Target(
            meta, ctx.tasks, cfg, load=lambda spec=spec: load_class(spec, ctx.args.model_args),
            out_dir=lambda m: Path(ctx.args.runs_dir) / "_models" / model_dir_name(m.name) / "eval",
            named_by_model=True))
    return out


def constant_baseline(cfg, split: str):
    """The floor: the mean of the training targets of the data the runs train on; with --split
    all (held-out images of a real source, whose "train" split is not what anyone trained on) the
    embedded data's, which is what the standard modes train on."""
    from medq.baselines import Constant
    from medq.config import DataConfig

    data_cfg = cfg.data if split == "test" else replace(DataConfig(), cache_dir=cfg.data.cache_dir)
    return Constant(data_cfg=data_cfg)


def baseline_targets(cfg, ctx) -> list[Target]:
    """Each baseline of ``BASELINE_NAMES`` on the tasks it is the reference for."""
    from medq.harness.load import load_baseline

    out = []
    for name in BASELINE_NAMES:
        tasks = [t for t in ctx.tasks if t in BASELINE_TASKS[name]]
        if not tasks:
            continue
        meta = {"name": name, "kind": "baseline", "run": name, "preset": "", "config_hash": "",
                "checkpoint": None, "step": None, "weights": None}
        where = Path(ctx.args.runs_dir) / "_baselines" / name / "eval"
        out.append(Target(meta, tasks, cfg, load=lambda name=name: (
            constant_baseline(cfg, ctx.args.split) if name == FLOOR else load_baseline(name)),
            out_dir=lambda _m, where=where: where))
    return out
